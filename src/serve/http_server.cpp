#include "sdtune/serve/http_server.h"

#include <httplib.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "sdtune/error.h"
#include "sdtune/io/image.h"
#include "sdtune/serve/generation_queue.h"
#include "sdtune/serve/sampler_names.h"
#include "sdtune/serve/web_page.h"

namespace sdtune::serve {
namespace {

using json = nlohmann::json;
constexpr int kMaxJsonDepth = 32;

const char* status_text(int status) {
  switch (status) {
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 413:
      return "Payload Too Large";
    case 414:
      return "URI Too Long";
    case 422:
      return "Unprocessable Entity";
    case 499:
      return "Client Closed Request";
    case 503:
      return "Service Unavailable";
    default:
      return status >= 500 ? "Internal Server Error" : "Error";
  }
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message) {
  send_json(res, status, {{"error", status_text(status)}, {"detail", message}});
}

// The body as JSON: a RequestError (422) when it is none, or nested deeper than anything A1111
// takes (writing such a value back would recurse without bound).
json parse_body(const std::string& body) {
  bool too_deep = false;
  json j = json::parse(
      body,
      [&](int depth, json::parse_event_t, json&) {
        if (depth > kMaxJsonDepth) too_deep = true;
        return true;
      },
      /*allow_exceptions=*/false);
  if (j.is_discarded()) throw RequestError(422, "the body is not valid JSON");
  if (too_deep) throw RequestError(422, "the body nests deeper than 32 levels");
  return j;
}

bool same_secret(const std::string& a, const std::string& b) {
  // Compared in time that does not depend on where they differ.
  if (b.empty()) return false;
  unsigned diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned>(a[i] ^ b[i % b.size()]);
  return diff == 0;
}

}  // namespace

struct HttpServer::Impl {
  ResidentModels& models;
  ServeOptions o;
  httplib::Server http;
  GenerationQueue queue;

  Impl(ResidentModels& m, ServeOptions options)
      : models(m),
        o(std::move(options)),
        queue(o.queue, [this](Job& job) { return models.generate(job, o.outputs); }) {
    routes();
  }

  void routes();
  void generation(const httplib::Request& req, httplib::Response& res, bool img2img);
  json progress(bool with_image) const;
};

void HttpServer::Impl::routes() {
  const int threads = o.threads;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.set_payload_max_length(o.max_body);
  // Small writes (a chunk's header, its data, its end) go out at once, not after a delayed ACK.
  http.set_tcp_nodelay(true);
  http.set_read_timeout(o.read_timeout_s, 0);
  http.set_write_timeout(o.read_timeout_s, 0);
  http.set_keep_alive_timeout(5);
  http.set_keep_alive_max_count(100);

  // Every request but the page itself (static, no data: a browser cannot send a token to load
  // it) needs the bearer token when the server has one.
  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (o.api_key.empty() || (req.method == "GET" && req.path == "/"))
      return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    const std::string prefix = "Bearer ";
    if (auth.rfind(prefix, 0) == 0 && same_secret(auth.substr(prefix.size()), o.api_key))
      return httplib::Server::HandlerResponse::Unhandled;
    res.set_header("WWW-Authenticate", "Bearer");
    send_error(res, 401, "a bearer token is needed (Authorization: Bearer TOKEN)");
    return httplib::Server::HandlerResponse::Handled;
  });
  // Statuses the library answers itself (404, 413, 400 for a malformed request): JSON too.
  http.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (res.body.empty())
      send_error(res, res.status,
                 res.status == 413 ? "the request body is over this server's limit"
                                   : status_text(res.status));
  });
  http.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        try {
          std::rethrow_exception(ep);
        } catch (const RequestError& e) {
          send_error(res, e.status(), e.what());
        } catch (const Error& e) {
          send_error(res, 500, e.message());
        } catch (const std::exception& e) {
          send_error(res, 500, e.what());
        } catch (...) {
          send_error(res, 500, "unknown error");
        }
      });

  http.Get("/", [](const httplib::Request&, httplib::Response& res) {
    // Nothing from elsewhere: the page's script, styles and images are its own.
    res.set_header("Content-Security-Policy",
                   "default-src 'self'; img-src 'self' data: blob:; style-src 'unsafe-inline'; "
                   "script-src 'unsafe-inline'; connect-src 'self'");
    res.set_content(std::string(web_page()), "text/html; charset=utf-8");
  });
  http.Post("/sdapi/v1/txt2img", [this](const httplib::Request& req, httplib::Response& res) {
    generation(req, res, false);
  });
  http.Post("/sdapi/v1/img2img", [this](const httplib::Request& req, httplib::Response& res) {
    generation(req, res, true);
  });
  http.Get("/sdapi/v1/sd-models", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, models.sd_models());
  });
  http.Get("/sdapi/v1/loras", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, models.loras());
  });
  http.Get("/sdapi/v1/samplers", [](const httplib::Request&, httplib::Response& res) {
    json out = json::array();
    for (const Sampler& s : a1111_samplers())
      out.push_back({{"name", s.name}, {"aliases", s.aliases}, {"options", json::object()}});
    send_json(res, 200, out);
  });
  http.Get("/sdapi/v1/schedulers", [](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200,
              json::array({{{"name", "automatic"}, {"label", "Automatic"}, {"aliases", nullptr}},
                           {{"name", "karras"}, {"label", "Karras"}, {"aliases", nullptr}}}));
  });
  http.Get("/sdapi/v1/options", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200,
              {{"sd_model_checkpoint", models.current_title()},
               {"CLIP_stop_at_last_layers", 1},
               {"samples_format", "png"}});
  });
  http.Post("/sdapi/v1/options", [this](const httplib::Request& req, httplib::Response& res) {
    const json body = parse_body(req.body);
    if (!body.is_object()) throw RequestError(422, "the body must be a JSON object");
    if (body.contains("sd_model_checkpoint")) {
      if (!body["sd_model_checkpoint"].is_string())
        throw RequestError(422, "sd_model_checkpoint: expected a string");
      models.select(body["sd_model_checkpoint"].get<std::string>());
    }
    send_json(res, 200, nullptr);  // other options are A1111's and ignored
  });
  http.Get("/sdapi/v1/progress", [this](const httplib::Request& req, httplib::Response& res) {
    send_json(res, 200, progress(req.get_param_value("skip_current_image") != "true"));
  });
  http.Post("/sdapi/v1/interrupt", [this](const httplib::Request&, httplib::Response& res) {
    queue.interrupt();
    send_json(res, 200, json::object());
  });
}

json HttpServer::Impl::progress(bool with_image) const {
  const std::shared_ptr<Job> job = queue.running();
  const int64_t count = static_cast<int64_t>(queue.waiting()) + (job ? 1 : 0);
  json state = {{"skipped", false},
                {"interrupted", job ? job->interrupted.load() : false},
                {"job", job ? "txt2img" : ""},
                {"job_count", count},
                {"job_timestamp", "0"},
                {"job_no", queue.finished()},
                {"sampling_step", 0},
                {"sampling_steps", 0}};
  if (!job)
    return {{"progress", 0.0},
            {"eta_relative", 0.0},
            {"state", state},
            {"current_image", nullptr},
            {"textinfo", nullptr}};
  const JobProgress p = job->progress();
  state["sampling_step"] = p.step;
  state["sampling_steps"] = p.steps;
  const double done =
      p.images > 0 && p.steps > 0
          ? (static_cast<double>(p.image) + static_cast<double>(p.step) / p.steps) / p.images
          : 0.0;
  const double eta = done > 0 ? p.seconds / done - p.seconds : 0.0;
  json image = nullptr;
  if (with_image)
    if (const auto preview = job->preview()) image = io::base64_encode(io::encode_png(*preview));
  return {{"progress", done},
          {"eta_relative", eta},
          {"state", state},
          {"current_image", image},
          {"textinfo", "step " + std::to_string(p.step) + " of " + std::to_string(p.steps) +
                           ", image " + std::to_string(p.image + 1) + " of " +
                           std::to_string(p.images)}};
}

void HttpServer::Impl::generation(const httplib::Request& req, httplib::Response& res,
                                  bool img2img) {
  GenerationRequest r = parse_generation_request(parse_body(req.body), img2img, o.limits);
  models.check(r);
  std::shared_ptr<Job> job = queue.submit(std::move(r));
  if (!job) {
    res.set_header("Retry-After", "5");
    send_error(res, 503, "the generation queue is full; retry later");
    return;
  }
  // The answer, once the job is done; till then a space a second, whose failed write (the client
  // has gone) cancels the job.
  res.status = 200;
  res.set_chunked_content_provider(
      "application/json",
      [job](size_t, httplib::DataSink& sink) {
        if (!job->wait(std::chrono::milliseconds(1000))) {
          if (!sink.write(" ", 1)) {
            job->cancelled = true;
            return false;
          }
          return true;
        }
        const json body =
            job->error_status() == 0
                ? job->answer()
                : json{{"error", status_text(job->error_status())}, {"detail", job->error()}};
        const std::string text = body.dump();
        if (!sink.write(text.data(), text.size())) return false;
        sink.done();
        return true;
      },
      [job](bool success) {
        if (!success) job->cancelled = true;
      });
}

HttpServer::HttpServer(ResidentModels& models, ServeOptions options)
    : impl_(std::make_unique<Impl>(models, std::move(options))) {}

HttpServer::~HttpServer() {
  stop();
}

void HttpServer::run() {
  Impl& s = *impl_;
  int port = s.o.port;
  if (port == 0) {
    port = s.http.bind_to_any_port(s.o.host);
    if (port < 0) throw Error("cannot bind to " + s.o.host);
  } else if (!s.http.bind_to_port(s.o.host, port)) {
    throw Error("cannot listen on " + s.o.host + ":" + std::to_string(port) +
                " (in use, or not an address of this machine)");
  }
  std::printf("sdtune serve: listening on http://%s:%d\n", s.o.host.c_str(), port);
  std::fflush(stdout);
  // HTTP on its own threads; generation here, on the thread that loaded the models.
  std::thread listener([&] { s.http.listen_after_bind(); });
  s.queue.serve();
  s.http.stop();
  listener.join();
}

void HttpServer::stop() {
  if (!impl_) return;
  impl_->queue.stop();
  impl_->http.stop();
}

}  // namespace sdtune::serve
