#pragma once
// One run per output folder. Two runs writing the same OUT would interleave checkpoints, prune
// each other's and overwrite the final model, so a run holds OUT/.sdtune.lock, an flock() taken
// for its whole life. The kernel releases an flock when its process dies, however it dies: a
// killed run never leaves a stale lock that the next one must be told to break.
#include <filesystem>
#include <vector>

namespace sdtune::train {

class OutputLock {
 public:
  // Creates `out` if needed and takes the lock; an Error naming `out` (and the holder's pid) when
  // another run holds it. Then removes what runs killed while writing left in `out`
  // (io::remove_stale_temporaries): with the lock held, no live process owns them.
  explicit OutputLock(const std::filesystem::path& out);
  // Releases the lock; a folder this lock created and nothing else was written to is removed, so
  // a run that fails before its first output leaves nothing behind.
  ~OutputLock();
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

  // The temporaries removed when the lock was taken.
  const std::vector<std::filesystem::path>& removed() const { return removed_; }

 private:
  std::filesystem::path out_;
  int fd_ = -1;
  bool created_ = false;
  std::vector<std::filesystem::path> removed_;
};

}  // namespace sdtune::train
