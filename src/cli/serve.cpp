// sdtune serve: the models kept in memory behind a web page and AUTOMATIC1111's HTTP API
// (serve/http_server.h), until Ctrl-C or SIGTERM, which cancel the running generation and stop.
#include <pthread.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "cli/commands.h"
#include "cli/generation_options.h"
#include "cli/number_checks.h"
#include "sdtune/error.h"
#include "sdtune/serve/http_server.h"
#include "sdtune/serve/resident_models.h"

namespace sdtune::cli {
namespace {

struct Args {
  std::vector<std::string> models, loras;
  std::string device = "cpu", dtype = "fp32", api_key_env;
  double max_body_mib = 64;
  serve::ServeOptions server;
  models::SingleFileOptions model_file;
};

void run(Args& a) {
  if (!a.api_key_env.empty()) {
    const char* key = std::getenv(a.api_key_env.c_str());
    if (!key || !*key)
      throw Error("--api-key-env " + a.api_key_env + ": that environment variable is not set");
    a.server.api_key = key;
  }
  a.server.max_body = static_cast<size_t>(a.max_body_mib * 1024 * 1024);
  if (!a.server.outputs.empty()) std::filesystem::create_directories(a.server.outputs);

  // Ctrl-C and SIGTERM go to one thread (blocked everywhere else, threads made from here on
  // inherit the mask), which stops the server: the running job is cancelled, and run() returns.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::atomic<serve::HttpServer*> server{nullptr};
  std::atomic<bool> ending{false};
  std::thread watcher([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    if (ending) return;  // woken by Join below
    serve::HttpServer* s = server.load();
    if (!s) std::_Exit(130);  // still loading: nothing to finish
    std::fprintf(stderr, "sdtune serve: stopping\n");
    s->stop();
  });
  struct Join {  // on every way out: wakes the watcher if it still waits, and joins it
    std::thread& t;
    std::atomic<bool>& ending;
    ~Join() {
      ending = true;
      pthread_kill(t.native_handle(), SIGTERM);
      t.join();
    }
  } join{watcher, ending};

  models::LoadOptions load;
  load.device = c10::Device(a.device);
  load.dtype = models::parse_dtype(a.dtype);
  if (load.device.is_cpu() && load.dtype == c10::kHalf)
    throw Error("fp16 runs on the GPU only; use --dtype fp32 or bf16 on the CPU");
  serve::ResidentModels resident(a.models, a.loras, load, a.model_file, [](const std::string& s) {
    std::fprintf(stderr, "sdtune serve: %s\n", s.c_str());
  });
  serve::HttpServer http(resident, a.server);
  server = &http;
  http.run();
  server = nullptr;
  std::printf("sdtune serve: stopped\n");
}

}  // namespace

void add_serve(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "serve", "A web page and AUTOMATIC1111's HTTP API (/sdapi/v1/txt2img, ...) for the models");
  cmd->add_option("--model", a->models,
                  "Pipeline folder or single file, kept in memory; repeatable (the first is the "
                  "default)")
      ->required()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--lora", a->loras,
                  "LoRA file offered to requests as <lora:NAME:SCALE> (NAME: the file's stem), "
                  "FILE[:SCALE] (the page's starting scale); repeatable")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--host", a->server.host,
                  "Address to listen on (others than 127.0.0.1 expose "
                  "the server to the network)")
      ->capture_default_str();
  cmd->add_option("--port", a->server.port, "Port (0: any free one, printed)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--device", a->device, "cpu or cuda")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--dtype", a->dtype, "fp32, fp16 (GPU only) or bf16")->capture_default_str();
  cmd->add_option("--api-key-env", a->api_key_env,
                  "Require 'Authorization: Bearer TOKEN' on every request, TOKEN being this "
                  "environment variable's value");
  cmd->add_option("--outputs", a->server.outputs,
                  "Also write every image here (names of sdtune's choosing); default: memory only");
  cmd->add_option("--queue", a->server.queue,
                  "Requests that may wait for the generator (more: 503)")
      ->capture_default_str()
      ->check(checks::at_least(1));
  cmd->add_option("--max-pixels", a->server.limits.max_pixels,
                  "Largest width × height a request "
                  "may ask for")
      ->capture_default_str()
      ->check(checks::at_least(64));
  cmd->add_option("--max-steps", a->server.limits.max_steps, "Most steps a request may ask for")
      ->capture_default_str()
      ->check(checks::at_least(1));
  cmd->add_option("--max-images", a->server.limits.max_images,
                  "Most images (batch_size × n_iter) a request may ask for")
      ->capture_default_str()
      ->check(checks::at_least(1));
  cmd->add_option("--max-body-mib", a->max_body_mib, "Largest request body, MiB (more: 413)")
      ->capture_default_str()
      ->check(checks::positive());
  cmd->add_option("--read-timeout", a->server.read_timeout_s,
                  "Seconds a client may take to send each part of its request")
      ->capture_default_str()
      ->check(checks::at_least(1));
  add_single_file_options(cmd, a->model_file);
  cmd->callback([a] { run(*a); });
}

}  // namespace sdtune::cli
