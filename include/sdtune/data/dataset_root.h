#pragma once
// The folder a downloaded dataset may read from. A dataset is untrusted input: a metadata.jsonl row
// whose file_name climbs out with "..", is absolute, or names a symlink that leads elsewhere would
// otherwise pull any file the user can read (private photos, keys as captions) into a model that
// may then be published. An entry is inside when its real path (symlinks resolved) lies under the
// dataset folder's real path. One exception needs no opt-in: a Hugging Face hub cache snapshot
// (".../datasets--OWNER--NAME/snapshots/REV/...") is made of symlinks into that repository's own
// ".../blobs/", which therefore counts as inside.
#include <filesystem>
#include <string>
#include <vector>

namespace sdtune::data {

enum class Confinement {
  DatasetFolder,  // entries outside the dataset folder are skipped (the default)
  Anywhere,       // --allow-outside-data: pools of images linked on purpose
};

class DatasetRoot {
 public:
  DatasetRoot(const std::filesystem::path& folder, Confinement confinement);

  // Empty when `entry` may be read; otherwise why not, naming where it really leads.
  std::string refusal(const std::filesystem::path& entry) const;

 private:
  std::vector<std::filesystem::path> roots_;  // real paths
  Confinement confinement_;
};

}  // namespace sdtune::data
