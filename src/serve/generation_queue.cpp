#include "sdtune/serve/generation_queue.h"

#include <c10/core/InferenceMode.h>

#include "sdtune/error.h"
#include "sdtune/serve/latent_preview.h"

namespace sdtune::serve {

void Job::start(int64_t images, bool xl) {
  std::lock_guard lock(mutex_);
  progress_ = {.images = images, .running = true, .xl = xl};
  started_ = std::chrono::steady_clock::now();
}

void Job::step(int64_t image, int64_t step, int64_t steps, const at::Tensor& latents) {
  // The preview is made here, on the generating thread (see the header), a few hundred
  // multiply-adds per latent pixel.
  at::Tensor preview;
  {
    c10::InferenceMode guard;
    preview = latent_preview(latents, progress().xl);
  }
  std::lock_guard lock(mutex_);
  progress_.image = image;
  progress_.step = step;
  progress_.steps = steps;
  preview_ = preview;
}

void Job::finish(nlohmann::json answer) {
  {
    std::lock_guard lock(mutex_);
    answer_ = std::move(answer);
    done_ = true;
    progress_.running = false;
  }
  changed_.notify_all();
}

void Job::fail(int status, std::string message) {
  {
    std::lock_guard lock(mutex_);
    error_status_ = status;
    error_ = std::move(message);
    done_ = true;
    progress_.running = false;
  }
  changed_.notify_all();
}

JobProgress Job::progress() const {
  std::lock_guard lock(mutex_);
  JobProgress p = progress_;
  if (p.running)
    p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  return p;
}

std::optional<at::Tensor> Job::preview() const {
  std::lock_guard lock(mutex_);
  if (!preview_.defined()) return std::nullopt;
  return preview_;
}

bool Job::wait(std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] { return done_; });
}

bool Job::done() const {
  std::lock_guard lock(mutex_);
  return done_;
}

GenerationQueue::GenerationQueue(size_t capacity, std::function<nlohmann::json(Job&)> run)
    : capacity_(capacity), run_(std::move(run)) {}

GenerationQueue::~GenerationQueue() {
  stop();
}

std::shared_ptr<Job> GenerationQueue::submit(GenerationRequest request) {
  std::lock_guard lock(mutex_);
  if (stopping_ || queue_.size() >= capacity_) return nullptr;
  auto job = std::make_shared<Job>(std::move(request));
  queue_.push_back(job);
  wake_.notify_one();
  return job;
}

std::shared_ptr<Job> GenerationQueue::running() const {
  std::lock_guard lock(mutex_);
  return running_;
}

size_t GenerationQueue::waiting() const {
  std::lock_guard lock(mutex_);
  return queue_.size();
}

void GenerationQueue::interrupt() {
  std::lock_guard lock(mutex_);
  if (running_) running_->interrupted = true;
}

void GenerationQueue::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    for (auto& job : queue_) {
      job->cancelled = true;
      job->fail(503, "the server is stopping");
    }
    queue_.clear();
    if (running_) running_->cancelled = true;
  }
  wake_.notify_all();
}

void GenerationQueue::serve() {
  while (true) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = queue_.front();
      queue_.pop_front();
      if (job->cancelled) continue;  // its client left while it waited
      running_ = job;
    }
    try {
      job->finish(run_(*job));
    } catch (const JobStopped&) {
      job->fail(499, "cancelled");
    } catch (const RequestError& e) {
      job->fail(e.status(), e.what());
    } catch (const Error& e) {
      job->fail(500, e.message());
    } catch (const std::exception& e) {
      job->fail(500, e.what());
    }
    ++finished_;
    std::lock_guard lock(mutex_);
    running_.reset();
  }
}

}  // namespace sdtune::serve
