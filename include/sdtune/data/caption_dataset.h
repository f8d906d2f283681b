#pragma once
// A folder of training images with their captions, in the conventions of diffusers'
// train_text_to_image.py (Hugging Face "imagefolder": metadata.jsonl) and kohya's sd-scripts
// (a NAME.txt caption next to each image).
#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

namespace sdtune::data {

struct Example {
  std::filesystem::path image;
  std::string caption;
  std::string source;  // where the caption came from: "metadata.jsonl:LINE", "NAME.txt" or ""
};

// A file left out of training and why, for the run summary.
struct Skipped {
  std::filesystem::path path;
  std::string reason;
};

// .jpg .jpeg .png .webp .bmp .tif .tiff, any letter case.
bool is_image_file(const std::filesystem::path& path);

class CaptionDataset {
 public:
  // Captions come from, in this order of preference:
  //  - DIR/metadata.jsonl: one JSON object per line with "file_name" (relative to DIR; the
  //    `image_column` key is accepted instead) and the caption under `caption_column` (a string,
  //    or a list of strings of which the first is used, as diffusers does outside training-time
  //    random choice). A line that is not a JSON object, or lacks the caption, is an Error naming
  //    the file and line. A row naming a missing file, and an image the metadata does not list,
  //    are skipped with a warning.
  //  - NAME.txt next to NAME.jpg (any image extension); a missing sidecar is an empty caption.
  //  - otherwise every caption is empty.
  // Images are searched recursively and sorted by path, so that a seed reproduces a run. No usable
  // image at all is an Error.
  static CaptionDataset from_folder(const std::filesystem::path& dir,
                                    const std::string& image_column = "image",
                                    const std::string& caption_column = "text");

  const std::vector<Example>& examples() const { return examples_; }
  const std::vector<Skipped>& skipped() const { return skipped_; }
  size_t size() const { return examples_.size(); }
  const Example& operator[](size_t i) const { return examples_[i]; }

 private:
  std::vector<Example> examples_;
  std::vector<Skipped> skipped_;
};

// Prints "sdtune: warning: skipping FILE: REASON" on stderr and records it.
void skip(std::vector<Skipped>& skipped, const std::filesystem::path& path,
          const std::string& reason);

}  // namespace sdtune::data
