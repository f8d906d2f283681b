#include "sdtune/warning.h"

#include <iostream>
#include <mutex>

namespace sdtune {
namespace {

std::mutex& sink_mutex() {
  static std::mutex m;
  return m;
}

std::function<void(const std::string&)>& sink() {
  static std::function<void(const std::string&)> s = [](const std::string& message) {
    std::cerr << "sdtune: warning: " << message << "\n";
  };
  return s;
}

}  // namespace

void warn(const std::string& message) {
  std::lock_guard<std::mutex> lock(sink_mutex());
  if (sink()) sink()(message);
}

void set_warning_sink(std::function<void(const std::string&)> s) {
  std::lock_guard<std::mutex> lock(sink_mutex());
  sink() = std::move(s);
}

}  // namespace sdtune
