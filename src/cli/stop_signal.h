#pragma once
// Ctrl-C / SIGTERM during training: the first one asks the run to stop after the current step
// (a training command then saves what it has and exits cleanly); a second one kills the process
// the default way. While a StopOnSignal lives, its flag is what TrainHooks::stop_requested reads;
// the previous handlers come back when it goes, also when the run throws.
#include <atomic>
#include <csignal>

namespace sdtune::cli {

class StopOnSignal {
 public:
  StopOnSignal();
  ~StopOnSignal();
  StopOnSignal(const StopOnSignal&) = delete;
  StopOnSignal& operator=(const StopOnSignal&) = delete;

  const std::atomic<bool>* flag() const;

 private:
  void (*previous_int_)(int);
  void (*previous_term_)(int);
};

}  // namespace sdtune::cli
