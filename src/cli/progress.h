#pragma once
// The one progress display of the command line: a bar on stderr when it is a terminal, with the
// rate and the time left; silent otherwise, or a line every 5% for commands that asked for a log
// trail (training); nothing at all when quiet.
#include <chrono>
#include <cstdint>
#include <string>

namespace sdtune::cli {

// "mm:ss" or "h:mm:ss"; "?" for a negative or absurd duration.
std::string format_duration(double seconds);

class Progress {
 public:
  // `log_lines`: when stderr is not a terminal, write "sdtune: LABEL done/total status" lines at
  // every 5% and at the end instead of nothing.
  Progress(std::string label, bool quiet, bool log_lines = false);
  // Marks `done` of `total` units finished; `status` ("loss 0.1234  lr 1e-05") follows the count.
  // The rate and the time left come from a moving average of the time per unit. The bar is
  // redrawn at most ~10 times a second, and always at the end.
  void update(int64_t done, int64_t total, const std::string& status = "");
  // "sdtune: MESSAGE" on a line of its own (above the bar on a terminal).
  void message(const std::string& m);
  // Clears the bar.
  void finish();
  // Seconds since construction.
  double elapsed() const;

 private:
  std::string label_;
  bool quiet_, tty_, log_lines_;
  std::chrono::steady_clock::time_point start_, last_draw_, last_update_;
  int64_t last_done_ = 0;
  double seconds_per_unit_ = 0;  // exponential moving average
  bool drawn_ = false;
};

}  // namespace sdtune::cli
