#include "sdtune/io/remove_tree.h"

#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "sdtune/error.h"

namespace sdtune::io {
namespace {

// nftw's callback has no user data: the count and the first error of the current walk live here
// (one walk at a time per thread).
thread_local std::uintmax_t t_removed = 0;
thread_local int t_error = 0;

int remove_entry(const char* path, const struct stat*, int type, struct FTW*) {
  // FTW_DEPTH: a folder comes after its contents; FTW_PHYS: links are removed, not followed.
  const int rc = (type == FTW_DP || type == FTW_D) ? ::rmdir(path) : ::unlink(path);
  if (rc != 0) {
    t_error = errno;
    return 1;  // stop the walk
  }
  ++t_removed;
  return 0;
}

}  // namespace

std::uintmax_t remove_tree(const std::filesystem::path& path, std::error_code& ec) noexcept {
  ec.clear();
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) ec.assign(errno, std::generic_category());
    return 0;
  }
  t_removed = 0;
  t_error = 0;
  const int rc = ::nftw(path.c_str(), remove_entry, 64, FTW_DEPTH | FTW_PHYS);
  if (rc != 0) ec.assign(t_error != 0 ? t_error : errno, std::generic_category());
  return t_removed;
}

std::uintmax_t remove_tree(const std::filesystem::path& path) {
  std::error_code ec;
  const std::uintmax_t n = remove_tree(path, ec);
  if (ec) throw Error("cannot remove: " + ec.message(), path.string());
  return n;
}

}  // namespace sdtune::io
