#pragma once
// A folder of training images with their captions, in the conventions of diffusers'
// train_text_to_image.py (Hugging Face "imagefolder": metadata.jsonl) and kohya's sd-scripts
// (a NAME.txt caption next to each image), or Hugging Face parquet files holding both.
#include <cstddef>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "sdtune/data/dataset_root.h"

namespace sdtune::data {

struct Example {
  // The image file; when `bytes` is set, a display name for warnings instead:
  // "FILE.parquet:row N" or "FILE.parquet:row N (PATH)" with the row's own file name.
  std::filesystem::path image;
  std::string caption;
  // Where the caption came from: "metadata.jsonl:LINE", "NAME.txt", "FILE.parquet:row N" or "".
  std::string source;
  std::shared_ptr<const std::string> bytes;  // the encoded image file, for parquet rows
};

// A file left out of training and why, for the run summary.
struct Skipped {
  std::filesystem::path path;
  std::string reason;
  bool outside_dataset = false;  // refused by the DatasetRoot, counted apart in the summary
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
  // image at all is an Error. Under Confinement::DatasetFolder, an image, row or caption file
  // whose real path lies outside DIR (see DatasetRoot) is skipped with a warning, and a
  // metadata.jsonl that does is an Error.
  static CaptionDataset from_folder(const std::filesystem::path& dir,
                                    const std::string& image_column = "image",
                                    const std::string& caption_column = "text",
                                    Confinement confinement = Confinement::DatasetFolder);

  // Rows of Hugging Face parquet files (datasets' data/train-00000-of-00001.parquet), file by file
  // in the order given, each file's rows in order (all row groups). `image_column` is the Image
  // feature's struct {bytes, path} or plain binary; `caption_column` a string (null: empty
  // caption) or a list of strings (the first is used). A missing column is an Error naming the
  // file and the columns it has. A row without image bytes is skipped with a warning; whether
  // the bytes decode is only known when loaded (load_training_image). No row at all is an Error.
  static CaptionDataset from_parquet(const std::vector<std::filesystem::path>& files,
                                     const std::string& image_column = "image",
                                     const std::string& caption_column = "text");

  const std::vector<Example>& examples() const { return examples_; }
  const std::vector<Skipped>& skipped() const { return skipped_; }
  size_t size() const { return examples_.size(); }
  const Example& operator[](size_t i) const { return examples_[i]; }

 private:
  friend CaptionDataset open_dataset(const std::filesystem::path&, const std::string&,
                                     const std::string&, Confinement);
  std::vector<Example> examples_;
  std::vector<Skipped> skipped_;
};

// What the user points training at: a .parquet file, or a folder holding *.parquet files
// (anywhere below it, read in path order) and no image files -> from_parquet; any other folder ->
// from_folder. A missing path is an Error naming it. A parquet file below the folder that leads
// outside it is skipped like an image.
CaptionDataset open_dataset(const std::filesystem::path& path,
                            const std::string& image_column = "image",
                            const std::string& caption_column = "text",
                            Confinement confinement = Confinement::DatasetFolder);

// Prints "sdtune: warning: skipping FILE: REASON" on stderr and records it.
void skip(std::vector<Skipped>& skipped, const std::filesystem::path& path,
          const std::string& reason, bool outside_dataset = false);

}  // namespace sdtune::data
