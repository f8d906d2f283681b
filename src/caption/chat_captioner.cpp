#include "sdtune/caption/chat_captioner.h"

#include <chrono>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include "sdtune/error.h"
#include "sdtune/io/http_client.h"
#include "sdtune/io/json_config.h"

namespace sdtune::caption {
namespace {

using json = nlohmann::json;

std::string trimmed(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\r\n\"");
  if (first == std::string::npos) return "";
  const auto last = s.find_last_not_of(" \t\r\n\"");
  return s.substr(first, last - first + 1);
}

// Every occurrence of the key replaced: a server may echo a request back in its error reply.
std::string masked(std::string text, const std::string& key) {
  if (key.empty()) return text;
  for (size_t at = text.find(key); at != std::string::npos; at = text.find(key, at + 3))
    text.replace(at, key.size(), "***");
  return text;
}

// The caption of a chat-completions reply: choices[0].message.content, a string or a list of
// text parts; "" when the reply has none.
std::string reply_caption(const std::string& body) {
  json reply;
  try {
    reply = json::parse(body, io::json_depth_limit("reply"));
  } catch (const std::exception&) {
    return "";
  }
  if (!reply.is_object() || !reply.contains("choices") || !reply["choices"].is_array() ||
      reply["choices"].empty() || !reply["choices"][0].is_object())
    return "";
  const json& choice = reply["choices"][0];
  if (!choice.contains("message") || !choice["message"].is_object()) return "";
  const json& message = choice["message"];
  if (!message.contains("content")) return "";
  const json& c = message["content"];
  if (c.is_string()) return trimmed(c.get<std::string>());
  std::string text;
  if (c.is_array())
    for (const json& part : c)
      if (part.is_object() && part.value("type", "") == "text" && part.contains("text") &&
          part["text"].is_string())
        text += part["text"].get<std::string>();
  return trimmed(text);
}

}  // namespace

std::string caption_image(const std::string& image_url, const ChatOptions& o,
                          const std::function<void(double)>& sleep) {
  std::string url = o.base_url;
  while (!url.empty() && url.back() == '/') url.pop_back();
  url += "/chat/completions";
  const json request = {{"model", o.model},
                        {"max_tokens", o.max_tokens},
                        {"messages",
                         {{{"role", "user"},
                           {"content",
                            {{{"type", "text"}, {"text", o.prompt}},
                             {{"type", "image_url"}, {"image_url", {{"url", image_url}}}}}}}}}};
  const std::string body = request.dump();
  std::vector<std::string> headers = {"Content-Type: application/json"};
  if (!o.api_key.empty()) headers.push_back("Authorization: Bearer " + o.api_key);

  std::string why;
  double delay = o.retry_delay_seconds;
  for (int attempt = 0; attempt <= o.retries; ++attempt) {
    std::optional<double> retry_after;
    try {
      const io::HttpResponse r = io::http_post(url, body, headers, o.timeout_seconds);
      if (r.status == 200) {
        const std::string caption = reply_caption(r.body);
        if (!caption.empty()) return caption;
        why = "a reply without a caption (" + std::to_string(r.body.size()) + " bytes)";
      } else {
        why = "HTTP " + std::to_string(r.status) + ": " + trimmed(r.body.substr(0, 200));
        // A wrong key or an unknown model does not get better by asking again.
        if (r.status != 429 && r.status != 408 && r.status < 500) break;
        retry_after = r.retry_after;
      }
    } catch (const Error& e) {
      why = e.message();
    }
    if (attempt == o.retries) break;
    const double wait = retry_after ? std::min(*retry_after, o.max_retry_after_seconds) : delay;
    delay *= 2;
    if (sleep)
      sleep(wait);
    else
      std::this_thread::sleep_for(std::chrono::duration<double>(wait));
  }
  throw Error(
      masked("no caption after " + std::to_string(o.retries + 1) + " attempts: " + why, o.api_key),
      masked(url, o.api_key));
}

}  // namespace sdtune::caption
