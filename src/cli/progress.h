#pragma once
// A one-line progress bar on stderr when it is a terminal; silent otherwise or when quiet.
#include <chrono>
#include <string>

namespace sdtune::cli {

class Progress {
 public:
  Progress(std::string label, bool quiet);
  // Marks `done` of `total` units finished; redraws at most ~10 times a second.
  void update(int64_t done, int64_t total);
  // Clears the bar.
  void finish();
  // Seconds since construction.
  double elapsed() const;

 private:
  std::string label_;
  bool enabled_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  bool drawn_ = false;
};

}  // namespace sdtune::cli
