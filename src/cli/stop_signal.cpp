#include "cli/stop_signal.h"

namespace sdtune::cli {
namespace {

std::atomic<bool> g_stop{false};

void on_signal(int sig) {
  g_stop.store(true);
  std::signal(sig, SIG_DFL);
}

}  // namespace

StopOnSignal::StopOnSignal() {
  g_stop.store(false);
  previous_int_ = std::signal(SIGINT, on_signal);
  previous_term_ = std::signal(SIGTERM, on_signal);
}

StopOnSignal::~StopOnSignal() {
  std::signal(SIGINT, previous_int_);
  std::signal(SIGTERM, previous_term_);
}

const std::atomic<bool>* StopOnSignal::flag() const {
  return &g_stop;
}

}  // namespace sdtune::cli
