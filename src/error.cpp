#include "sdtune/error.h"

namespace sdtune {
namespace {

// "file: 'key': message" with the empty parts left out; always a single line.
std::string compose(const std::string& message, const std::string& file, const std::string& key) {
  std::string out;
  if (!file.empty()) out += file + ": ";
  if (!key.empty()) out += "'" + key + "': ";
  out += message;
  for (char& c : out)
    if (c == '\n' || c == '\r') c = ' ';
  return out;
}

}  // namespace

Error::Error(std::string message, std::string file, std::string key)
    : std::runtime_error(compose(message, file, key)),
      message_(std::move(message)),
      file_(std::move(file)),
      key_(std::move(key)) {}

Error Error::with_file(const std::string& file) const {
  return file_.empty() ? Error(message_, file, key_) : *this;
}

Error Error::with_key(const std::string& key) const {
  return key_.empty() ? Error(message_, file_, key) : *this;
}

}  // namespace sdtune
