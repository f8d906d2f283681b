#include "cli/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace sdtune::cli {

std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e8) return "?";
  const long s = static_cast<long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", s / 60, s % 60);
  return buf;
}

Progress::Progress(std::string label, bool quiet, bool log_lines)
    : label_(std::move(label)),
      quiet_(quiet),
      tty_(::isatty(STDERR_FILENO) != 0),
      log_lines_(log_lines),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_),
      last_update_(start_) {}

double Progress::elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(int64_t done, int64_t total, const std::string& status) {
  const auto now = std::chrono::steady_clock::now();
  if (done > last_done_) {
    const double per = std::chrono::duration<double>(now - last_update_).count() /
                       static_cast<double>(done - last_done_);
    seconds_per_unit_ = seconds_per_unit_ == 0 ? per : 0.9 * seconds_per_unit_ + 0.1 * per;
  }
  last_update_ = now;
  last_done_ = done;
  if (quiet_) return;
  const bool end = done >= total;
  char line[512];
  std::snprintf(line, sizeof line, "%lld/%lld%s%s  %.2f it/s  ETA %s", static_cast<long long>(done),
                static_cast<long long>(total), status.empty() ? "" : "  ", status.c_str(),
                seconds_per_unit_ > 0 ? 1.0 / seconds_per_unit_ : 0.0,
                format_duration(seconds_per_unit_ * static_cast<double>(total - done)).c_str());
  if (!tty_) {
    if (log_lines_ && (done % std::max<int64_t>(1, total / 20) == 0 || end))
      std::fprintf(stderr, "sdtune: %s %s\n", label_.c_str(), line);
    return;
  }
  if (!end && drawn_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  drawn_ = true;
  constexpr int kWidth = 30;
  const int filled = total > 0 ? static_cast<int>(kWidth * std::min(done, total) / total) : kWidth;
  std::fprintf(stderr, "\r\033[K%s [%s%s] %s", label_.c_str(), std::string(filled, '#').c_str(),
               std::string(kWidth - filled, '.').c_str(), line);
  std::fflush(stderr);
}

void Progress::message(const std::string& m) {
  if (quiet_) return;
  std::fprintf(stderr, "%ssdtune: %s\n", tty_ && drawn_ ? "\r\033[K" : "", m.c_str());
  drawn_ = false;  // the next update draws the bar again below the message
}

void Progress::finish() {
  if (!quiet_ && tty_ && drawn_) std::fprintf(stderr, "\r\033[K");
  drawn_ = false;
}

}  // namespace sdtune::cli
