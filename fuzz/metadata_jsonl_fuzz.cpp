// libFuzzer target: arbitrary bytes as a dataset's metadata.jsonl, read by
// CaptionDataset::from_folder in a folder holding two images, a symlink to a file outside it and a
// symlink to the folder above it. A bad file must end in sdtune::Error; a dataset that opens must
// hold only regular files whose real paths lie inside the folder, each name once, in path order,
// and
// every refusal of a file outside must be counted as such.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <set>
#include <string>
#include <string_view>
#include <system_error>

#include "fuzz_common.h"
#include "sdtune/data/caption_dataset.h"
#include "sdtune/error.h"

namespace {

namespace fs = std::filesystem;
using sdtune::fuzz::check;

// scratch/dataset/{a.png, sub/b.png, secret_link.png -> ../secret.png, up -> ..} and
// scratch/secret.png.
const fs::path& dataset_dir() {
  static const fs::path dir = [] {
    const fs::path scratch = sdtune::fuzz::scratch_dir();
    const fs::path d = scratch / "dataset";
    fs::create_directories(d / "sub");
    sdtune::fuzz::write_file(d / "a.png", "not decoded here");
    sdtune::fuzz::write_file(d / "sub" / "b.png", "not decoded here");
    sdtune::fuzz::write_file(scratch / "secret.png", "private");
    fs::create_symlink("../secret.png", d / "secret_link.png");
    fs::create_directory_symlink("..", d / "up");
    return d;
  }();
  return dir;
}

bool inside(const fs::path& real, const fs::path& root) {
  const auto [r, p] = std::mismatch(root.begin(), root.end(), real.begin(), real.end());
  return r == root.end();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path& dir = dataset_dir();
  sdtune::fuzz::write_file(dir / "metadata.jsonl",
                           std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    const auto dataset = sdtune::data::CaptionDataset::from_folder(dir, "image", "text");
    check(!dataset.examples().empty(), "an opened dataset without examples");
    const fs::path root = fs::canonical(dir);
    std::set<fs::path> seen;
    const sdtune::data::Example* previous = nullptr;
    for (const auto& ex : dataset.examples()) {
      check(!ex.bytes, "a folder example with bytes", ex.image.string());
      check(fs::is_regular_file(ex.image), "an example that is not a regular file",
            ex.image.string());
      std::error_code ec;
      const fs::path real = fs::canonical(ex.image, ec);
      check(!ec && inside(real, root), "an example outside the dataset folder", ex.image.string());
      check(real.filename() != "secret.png", "the file outside was read", ex.image.string());
      // Lexically: a Hugging Face cache links identical images to one blob, and both are kept.
      check(seen.insert(ex.image.lexically_normal()).second, "an image listed twice was kept twice",
            ex.image.string());
      check(previous == nullptr || previous->image < ex.image, "examples out of path order");
      previous = &ex;
    }
    const fs::path secret = fs::canonical(sdtune::fuzz::scratch_dir() / "secret.png");
    for (const auto& s : dataset.skipped()) {
      std::error_code ec;
      const fs::path real = fs::canonical(s.path, ec);  // an error: not there at all
      if (!ec && real == secret)
        check(s.outside_dataset, "the file outside was skipped but not counted as outside",
              s.path.string());
    }
  } catch (const sdtune::Error&) {
  }
  return 0;
}
