#include "sdtune/io/atomic_write.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <regex>
#include <string>
#include <system_error>

#include "sdtune/error.h"
#include "sdtune/io/remove_tree.h"

namespace sdtune::io {
namespace fs = std::filesystem;
namespace {

// `path` with a suffix appended to its last component ("out" -> "out.tmp-123").
fs::path sibling(const fs::path& path, const std::string& suffix) {
  return path.parent_path() / (path.filename().string() + suffix);
}

// Runs `f`, turning filesystem and other standard errors into an Error naming the path.
template <typename F>
void as_error(const fs::path& path, F&& f) {
  try {
    f();
  } catch (const Error&) {
    throw;
  } catch (const fs::filesystem_error& e) {
    throw Error(e.code().message(), e.path1().empty() ? path.string() : e.path1().string());
  } catch (const std::exception& e) {
    throw Error(e.what(), path.string());
  }
}

}  // namespace

void sync_path(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(std::string("cannot open for fsync: ") + std::strerror(errno), path);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw Error(std::string("fsync failed: ") + std::strerror(err), path);
}

void sync_tree(const fs::path& root) {
  for (const auto& entry : fs::recursive_directory_iterator(root))
    if (entry.is_regular_file() || entry.is_directory()) sync_path(entry.path());
  sync_path(root);
}

void write_file_atomically(const fs::path& path, const std::function<void(const fs::path&)>& write,
                           Existing existing) {
  if (existing == Existing::Refuse && fs::exists(path))
    throw Error("refusing to overwrite an existing file", path.string());
  const fs::path tmp = sibling(path, ".tmp." + std::to_string(::getpid()));
  std::error_code ignored;
  try {
    write(tmp);
    sync_path(tmp);
    if (existing == Existing::Replace) {
      std::error_code ec;
      fs::rename(tmp, path, ec);
      if (ec)
        throw Error("cannot rename " + tmp.string() + " onto the target: " + ec.message(),
                    path.string());
    } else {
      // link() fails if `path` appeared meanwhile, so a concurrent writer is never clobbered.
      if (::link(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        throw Error(err == EEXIST ? "refusing to overwrite an existing file"
                                  : std::string("cannot create: ") + std::strerror(err),
                    path.string());
      }
      fs::remove(tmp, ignored);
    }
  } catch (...) {
    fs::remove(tmp, ignored);
    throw;
  }
}

void publish_folder(const fs::path& dir, const std::function<void(const fs::path&)>& fill) {
  const std::string pid = std::to_string(::getpid());
  const fs::path tmp = sibling(dir, ".tmp-" + pid), old = sibling(dir, ".old-" + pid);
  std::error_code ec;
  try {
    as_error(tmp, [&] {
      if (!dir.parent_path().empty()) fs::create_directories(dir.parent_path());
      remove_tree(tmp);  // left over by an earlier process with our pid
      fs::create_directory(tmp);
      fill(tmp);
      sync_tree(tmp);
    });
  } catch (...) {
    remove_tree(tmp, ec);
    throw;
  }
  // The swap: between the two renames neither `dir` nor a half-written folder exists under that
  // name; `old` (complete) remains until the new folder is in place.
  const bool replace = fs::exists(dir);
  if (replace) {
    remove_tree(old, ec);
    fs::rename(dir, old, ec);
    if (ec) {
      remove_tree(tmp, ec);
      throw Error("cannot move the existing folder aside: " + ec.message(), dir.string());
    }
  }
  fs::rename(tmp, dir, ec);
  if (ec) {
    const std::string message = ec.message();
    if (replace) fs::rename(old, dir, ec);  // put the old folder back
    remove_tree(tmp, ec);
    throw Error("cannot move the new folder into place: " + message, dir.string());
  }
  if (!dir.parent_path().empty()) sync_path(dir.parent_path());
  if (replace) {
    remove_tree(old, ec);
    if (ec) throw Error("saved, but cannot remove the previous folder: " + ec.message(), old);
  }
}

void retire_folder(const fs::path& dir) {
  const fs::path old = sibling(dir, ".old-" + std::to_string(::getpid()));
  std::error_code ec;
  remove_tree(old, ec);
  fs::rename(dir, old, ec);
  if (ec) throw Error("cannot move the folder aside to remove it: " + ec.message(), dir.string());
  if (!dir.parent_path().empty()) sync_path(dir.parent_path());
  remove_tree(old, ec);
  if (ec) throw Error("cannot remove: " + ec.message(), old.string());
}

bool is_temporary_name(const std::string& name) {
  static const std::regex temporary(R"(.*\.(tmp\.|tmp-|old-)[0-9]+)");
  return std::regex_match(name, temporary);
}

std::vector<fs::path> remove_stale_temporaries(const fs::path& root) {
  std::vector<fs::path> found;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (!is_temporary_name(it->path().filename().string())) continue;
    found.push_back(it->path());
    it.disable_recursion_pending();  // the whole temporary goes
  }
  for (const auto& path : found) {
    remove_tree(path, ec);
    if (ec) throw Error("cannot remove what an interrupted run left: " + ec.message(), path);
  }
  return found;
}

}  // namespace sdtune::io
