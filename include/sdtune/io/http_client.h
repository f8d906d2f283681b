#pragma once
// HTTP requests through libcurl: what `sdtune caption` needs to reach an OpenAI-compatible
// chat-completions server (llama.cpp, vLLM, Ollama or a hosted API).
#include <optional>
#include <string>
#include <vector>

namespace sdtune::io {

struct HttpResponse {
  long status = 0;
  std::string body;  // at most kMaxHttpBody bytes
  // Retry-After in seconds, when the server sent one (delta-seconds; an HTTP date is ignored).
  std::optional<double> retry_after;
};

constexpr size_t kMaxHttpBody = size_t{16} << 20;

// POSTs `body` to `url` with `headers` ("Name: value"), waiting at most `timeout_seconds` for the
// whole exchange. Transport failures (no connection, timeout, a reply over kMaxHttpBody) throw an
// Error naming the URL and libcurl's reason; the headers never appear in it (they may hold a key).
HttpResponse http_post(const std::string& url, const std::string& body,
                       const std::vector<std::string>& headers, double timeout_seconds);

}  // namespace sdtune::io
