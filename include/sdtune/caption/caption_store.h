#pragma once
// The captions of a dataset folder as `sdtune train --data DIR` reads them: DIR/metadata.jsonl
// (one {"file_name", "text"} object per line) or NAME.txt beside each image (--sidecar). What
// `sdtune caption` reads first (to keep existing captions and caption only what is missing) and
// writes back, atomically.
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace sdtune::caption {

class CaptionStore {
 public:
  // Reads DIR's captions. The images are DIR's image files (any depth, sorted), those whose real
  // path leads outside DIR left out with a warning. Errors name the file and line: a
  // metadata.jsonl line that is not a JSON object, or one without "file_name".
  static CaptionStore open(const std::filesystem::path& dir, bool sidecar);

  const std::vector<std::filesystem::path>& images() const { return images_; }  // relative
  // Whether the image has a non-empty caption already.
  bool has_caption(const std::filesystem::path& image) const;
  // Sets the caption in memory (a metadata row's other fields are kept); save() writes it.
  void set(const std::filesystem::path& image, const std::string& caption);
  // Writes what set() changed: metadata.jsonl rewritten whole through a temporary file (rows in
  // their order, new ones after them), or each changed NAME.txt the same way.
  void save();

 private:
  std::filesystem::path dir_;
  bool sidecar_ = false;
  std::vector<std::filesystem::path> images_;
  std::vector<nlohmann::json> rows_;                   // metadata.jsonl, in order
  std::map<std::string, size_t> row_of_;               // file_name -> row
  std::map<std::filesystem::path, std::string> text_;  // sidecar captions
  std::vector<std::filesystem::path> changed_;
};

}  // namespace sdtune::caption
