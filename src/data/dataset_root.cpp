#include "sdtune/data/dataset_root.h"

#include <algorithm>
#include <system_error>

namespace sdtune::data {
namespace fs = std::filesystem;
namespace {

// The real path: every symlink resolved, ".." folded; the part that does not exist kept as is.
fs::path real_path(const fs::path& p) {
  std::error_code ec;
  fs::path out = fs::weakly_canonical(fs::absolute(p, ec), ec);
  return ec ? fs::absolute(p).lexically_normal() : out;
}

bool is_under(const fs::path& path, const fs::path& root) {
  auto [r, p] = std::mismatch(root.begin(), root.end(), path.begin(), path.end());
  return r == root.end() || (r->empty() && std::next(r) == root.end());  // "root/" ends in ""
}

}  // namespace

DatasetRoot::DatasetRoot(const fs::path& folder, Confinement confinement)
    : confinement_(confinement) {
  const fs::path root = real_path(folder);
  roots_.push_back(root);
  // A hub cache snapshot: REPO/snapshots/REV[/sub/folder] links into REPO/blobs.
  for (fs::path p = root; p.has_relative_path(); p = p.parent_path()) {
    if (p.parent_path().filename() != "snapshots") continue;
    const fs::path blobs = p.parent_path().parent_path() / "blobs";
    if (fs::is_directory(blobs)) roots_.push_back(real_path(blobs));
    break;
  }
}

std::string DatasetRoot::refusal(const fs::path& entry) const {
  if (confinement_ == Confinement::Anywhere) return {};
  const fs::path real = real_path(entry);
  for (const auto& root : roots_)
    if (is_under(real, root)) return {};
  return "outside the dataset folder " + roots_.front().string() + " (it leads to " +
         real.string() + "); --allow-outside-data reads it";
}

}  // namespace sdtune::data
