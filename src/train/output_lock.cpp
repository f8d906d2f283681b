#include "sdtune/train/output_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>

#include "sdtune/error.h"
#include "sdtune/io/atomic_write.h"

namespace sdtune::train {
namespace fs = std::filesystem;
namespace {

const char* kLockFile = ".sdtune.lock";

// The pid the holder wrote into the lock file, for the message ("" if unreadable).
std::string holder_pid(int fd) {
  char buf[32] = {};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string pid(buf, n > 0 ? static_cast<size_t>(n) : 0);
  while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
  return pid;
}

}  // namespace

OutputLock::OutputLock(const fs::path& out) : out_(out) {
  std::error_code ec;
  created_ = !fs::exists(out, ec);
  fs::create_directories(out, ec);
  if (ec) throw Error("cannot create the output folder: " + ec.message(), out.string());
  const fs::path file = out / kLockFile;
  fd_ = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(std::string("cannot open the lock file: ") + std::strerror(errno), file);
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    const std::string pid = holder_pid(fd_);
    ::close(fd_);
    if (err == EWOULDBLOCK)
      throw Error("another sdtune run" + (pid.empty() ? "" : " (pid " + pid + ")") +
                      " is writing to this output folder; wait for it to end or choose another "
                      "--out",
                  out.string());
    throw Error(std::string("cannot lock: ") + std::strerror(err), file);
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) < 0) {
    // Only the message of a second run would lack our pid: not worth failing for.
  }
  removed_ = io::remove_stale_temporaries(out);
}

OutputLock::~OutputLock() {
  if (created_) {
    std::error_code ec;
    bool only_the_lock = true;
    for (const auto& entry : fs::directory_iterator(out_, ec))
      only_the_lock = only_the_lock && entry.path().filename() == kLockFile;
    if (!ec && only_the_lock) {
      fs::remove(out_ / kLockFile, ec);
      fs::remove(out_, ec);
    }
  }
  ::close(fd_);
}

}  // namespace sdtune::train
