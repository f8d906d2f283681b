#pragma once
// The one error type of sdtune. It carries the context a user needs to fix the problem: the file,
// the key inside it, and the message (which says expected against actual where that applies).
// The CLI prints what() on one line and exits non-zero.
#include <stdexcept>
#include <string>

namespace sdtune {

class Error : public std::runtime_error {
 public:
  explicit Error(std::string message, std::string file = {}, std::string key = {});

  const std::string& message() const { return message_; }
  const std::string& file() const { return file_; }
  const std::string& key() const { return key_; }

  // Returns a copy with the file (or key) filled in when it was still empty: lets an outer layer
  // add context to an error thrown deeper down.
  Error with_file(const std::string& file) const;
  Error with_key(const std::string& key) const;

 private:
  std::string message_, file_, key_;
};

}  // namespace sdtune
