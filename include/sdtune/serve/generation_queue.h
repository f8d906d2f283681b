#pragma once
// One generation at a time per device, from a bounded queue: a request waits its turn (or is
// refused when the queue is full: the server answers 503 with Retry-After), runs on the one thread
// that serve()s the queue (the one that loaded the models: a second thread running LibTorch ops
// would start a second OpenMP team, and two teams on the same cores make every parallel region
// wait on futex wake-ups, several times slower), reports its progress (step k of n, image i of m,
// the latest latents for a preview) and can be interrupted (A1111's /interrupt: the images done so
// far are the answer) or cancelled (its client went away, or the server is stopping: nothing is
// answered).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "sdtune/serve/generation_request.h"

namespace sdtune::serve {

struct JobProgress {
  int64_t step = 0, steps = 0;    // denoising steps done of the current image
  int64_t image = 0, images = 0;  // images done of the request
  bool running = false;
  bool xl = false;     // an SDXL model's latents (for the preview's colours)
  double seconds = 0;  // since the job started running
};

// Thrown from a generation's step callback to stop it (see Job::check).
struct JobStopped {};

class Job {
 public:
  explicit Job(GenerationRequest r) : request(std::move(r)) {}

  const GenerationRequest request;
  std::atomic<bool> cancelled{false};    // no answer is wanted
  std::atomic<bool> interrupted{false};  // answer with what is done

  // Worker side.
  void start(int64_t images, bool xl);
  void step(int64_t image, int64_t step, int64_t steps, const at::Tensor& latents);
  void check() const {  // throws JobStopped when the job is to stop
    if (cancelled || interrupted) throw JobStopped{};
  }
  void finish(nlohmann::json answer);
  void fail(int status, std::string message);

  // Client side.
  JobProgress progress() const;
  // The latest latents' cheap preview (serve/latent_preview.h), uint8 [h,w,3].
  std::optional<at::Tensor> preview() const;
  // Waits up to `timeout` for the answer; true when it is there.
  bool wait(std::chrono::milliseconds timeout) const;
  bool done() const;
  // After done(): the answer, or the error's status (0 without one) and message.
  const nlohmann::json& answer() const { return answer_; }
  int error_status() const { return error_status_; }
  const std::string& error() const { return error_; }

 private:
  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  JobProgress progress_;
  std::chrono::steady_clock::time_point started_;
  at::Tensor preview_;
  bool done_ = false;
  nlohmann::json answer_;
  int error_status_ = 0;
  std::string error_;
};

class GenerationQueue {
 public:
  // `run` generates a job (on the thread in serve()) and returns its answer; a RequestError or
  // Error it throws becomes the job's error.
  GenerationQueue(size_t capacity, std::function<nlohmann::json(Job&)> run);
  ~GenerationQueue();
  GenerationQueue(const GenerationQueue&) = delete;
  GenerationQueue& operator=(const GenerationQueue&) = delete;

  // The job, queued; nullptr when `capacity` jobs are waiting already.
  std::shared_ptr<Job> submit(GenerationRequest request);
  std::shared_ptr<Job> running() const;  // null when idle
  size_t waiting() const;
  int64_t finished() const { return finished_; }
  void interrupt();  // the running job's
  // Runs the queued jobs, one after another, on the calling thread until stop().
  void serve();
  // Cancels every job and makes serve() return; later submits are refused.
  void stop();

 private:
  const size_t capacity_;
  std::function<nlohmann::json(Job&)> run_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::shared_ptr<Job> running_;
  bool stopping_ = false;
  std::atomic<int64_t> finished_{0};
};

}  // namespace sdtune::serve
