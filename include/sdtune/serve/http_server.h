#pragma once
// `sdtune serve`'s HTTP side (cpp-httplib): the web page at / and the subset of AUTOMATIC1111's
// API that clients use (/sdapi/v1/txt2img, img2img, sd-models, samplers, schedulers, loras,
// options, progress, interrupt), over one GenerationQueue.
//
// Under load and attack: request bodies over `max_body` get 413, requests over the limits or with
// bad JSON 422 (JSON error bodies), a full queue 503 with Retry-After, a missing or wrong bearer
// token 401. Reads time out (a client that sends its request slowly holds one of the pool's
// threads for at most `read_timeout_s` per read, never the server), and a generation whose client
// has gone is cancelled: while it waits, the answer's connection carries a space every second
// (JSON allows leading whitespace), and a failed write cancels the job. No endpoint takes a path.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "sdtune/serve/generation_request.h"
#include "sdtune/serve/resident_models.h"

namespace sdtune::serve {

struct ServeOptions {
  std::string host = "127.0.0.1";
  int port = 7860;      // 0: any free port (the one taken is printed)
  std::string api_key;  // empty: no token needed
  size_t max_body = 64 << 20;
  size_t queue = 16;  // requests waiting besides the running one
  int threads = 48;   // connections served at once
  int read_timeout_s = 10;
  ServeLimits limits;
  std::filesystem::path outputs;  // empty: images live in memory only
};

class HttpServer {
 public:
  HttpServer(ResidentModels& models, ServeOptions options);
  ~HttpServer();

  // Binds, says where (stdout: "sdtune serve: listening on http://HOST:PORT"), and serves until
  // stop(). An Error when the address cannot be bound.
  void run();
  // From any thread (the signal watcher): cancels the running generation and stops serving.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sdtune::serve
