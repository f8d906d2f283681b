#pragma once
// Captions from a vision-language model behind an OpenAI-compatible chat-completions API
// (POST BASE/chat/completions, the image as a base64 data URL): llama.cpp's server, vLLM, Ollama,
// or a hosted API.
#include <functional>
#include <string>

namespace sdtune::caption {

struct ChatOptions {
  std::string base_url;  // "http://127.0.0.1:8080/v1"
  std::string model;
  std::string prompt =
      "Write a one-sentence caption of this image for training a text-to-image model: what it "
      "shows, its style and its colours. Reply with the caption only.";
  std::string api_key;  // sent as "Authorization: Bearer KEY" when not empty; never printed
  int64_t max_tokens = 200;
  double timeout_seconds = 120;
  int retries = 4;                 // after the first attempt
  double retry_delay_seconds = 2;  // doubled after each failed attempt, unless Retry-After says
  double max_retry_after_seconds = 300;
};

// The caption of one image, given as a data URL (io::png_data_url). Each attempt that fails (no
// connection, a timeout, HTTP 429 or 5xx, a reply that is not the API's JSON, an empty caption) is
// retried after the server's Retry-After or an exponential backoff; other 4xx replies (a wrong key,
// an unknown model) are not. After the last attempt, an Error says why, with the key masked.
// `sleep` waits (a test can record the waits).
std::string caption_image(const std::string& image_url, const ChatOptions& options,
                          const std::function<void(double seconds)>& sleep = {});

}  // namespace sdtune::caption
