#include "sdtune/data/caption_dataset.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "sdtune/error.h"
#include "sdtune/io/json_config.h"
#include "sdtune/io/parquet.h"
#include "sdtune/io/read_file.h"
#include "sdtune/warning.h"

namespace sdtune::data {
namespace fs = std::filesystem;
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::vector<fs::path> find_images(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file() && is_image_file(entry.path())) out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string read_text(const fs::path& path) {
  std::string text = io::read_file(path, std::uintmax_t{1} << 20);
  // Editors leave a trailing newline; kohya strips the caption too.
  const auto not_space = [](unsigned char c) { return !std::isspace(c); };
  text.erase(std::find_if(text.rbegin(), text.rend(), not_space).base(), text.end());
  text.erase(text.begin(), std::find_if(text.begin(), text.end(), not_space));
  return text;
}

std::string caption_of(const nlohmann::json& row, const std::string& column,
                       const std::string& where, const fs::path& file) {
  auto it = row.find(column);
  if (it == row.end())
    throw Error("row has no caption column '" + column + "'", file.string(), where);
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array() && !it->empty() && (*it)[0].is_string()) return (*it)[0].get<std::string>();
  throw Error("caption column '" + column + "' should hold a string or a list of strings",
              file.string(), where);
}

// Whether `root` refuses `entry`; if so it is recorded in `skipped` with the reason after `what`.
bool skipped_outside(const DatasetRoot& root, const fs::path& entry, std::vector<Skipped>& skipped,
                     const std::string& what = "") {
  const std::string why = root.refusal(entry);
  if (!why.empty()) skip(skipped, entry, what + why, /*outside_dataset=*/true);
  return !why.empty();
}

}  // namespace

bool is_image_file(const fs::path& path) {
  static const std::set<std::string> kExtensions = {".jpg", ".jpeg", ".png", ".webp",
                                                    ".bmp", ".tif",  ".tiff"};
  return kExtensions.count(lower(path.extension().string())) > 0;
}

void skip(std::vector<Skipped>& skipped, const fs::path& path, const std::string& reason,
          bool outside_dataset) {
  warn("skipping " + path.string() + ": " + reason);
  skipped.push_back({path, reason, outside_dataset});
}

CaptionDataset CaptionDataset::from_folder(const fs::path& dir, const std::string& image_column,
                                           const std::string& caption_column,
                                           Confinement confinement) {
  if (!fs::is_directory(dir)) throw Error("dataset folder not found", dir.string());
  CaptionDataset out;
  const DatasetRoot root(dir, confinement);
  const auto outside = [&](const fs::path& entry, const std::string& what = "") {
    return skipped_outside(root, entry, out.skipped_, what);
  };
  const std::vector<fs::path> images = find_images(dir);
  const fs::path metadata = dir / "metadata.jsonl";

  if (fs::is_regular_file(metadata)) {
    if (const std::string why = root.refusal(metadata); !why.empty())
      throw Error("the dataset's metadata.jsonl is " + why, metadata.string());
    std::ifstream in(metadata);
    if (!in) throw Error("cannot read", metadata.string());
    std::set<fs::path> listed;
    std::string line;
    for (int64_t number = 1; std::getline(in, line); ++number) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = "line " + std::to_string(number);
      nlohmann::json row;
      try {
        row = nlohmann::json::parse(line, io::json_depth_limit(metadata.string() + " " + where));
      } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range: 1e999
        throw Error(where + " is not valid JSON: " + e.what(), metadata.string(), where);
      }
      if (!row.is_object()) throw Error(where + " is not a JSON object", metadata.string(), where);
      auto name = row.find("file_name");
      if (name == row.end()) name = row.find(image_column);
      if (name == row.end() || !name->is_string())
        throw Error("row has no \"file_name\"", metadata.string(), where);
      const fs::path image = (dir / name->get<std::string>()).lexically_normal();
      const std::string caption = caption_of(row, caption_column, where, metadata);
      if (outside(image, "listed in metadata.jsonl " + where + " but ")) continue;
      if (!fs::is_regular_file(image)) {
        skip(out.skipped_, image, "listed in metadata.jsonl " + where + " but not found");
        continue;
      }
      if (!listed.insert(image).second) {
        skip(out.skipped_, image, "listed again in metadata.jsonl " + where);
        continue;
      }
      out.examples_.push_back({image, caption, "metadata.jsonl:" + std::to_string(number)});
    }
    for (const auto& image : images) {
      if (!listed.count(image.lexically_normal()) && root.refusal(image).empty())
        skip(out.skipped_, image, "not listed in metadata.jsonl");
    }
    std::sort(out.examples_.begin(), out.examples_.end(),
              [](const Example& a, const Example& b) { return a.image < b.image; });
  } else {
    for (const auto& image : images) {
      fs::path sidecar = image;
      sidecar.replace_extension(".txt");
      if (outside(image)) continue;
      if (fs::exists(sidecar) && outside(sidecar, "its caption file is ")) continue;
      if (fs::is_regular_file(sidecar))
        out.examples_.push_back({image, read_text(sidecar), sidecar.filename().string()});
      else
        out.examples_.push_back({image, "", ""});
    }
  }
  if (out.examples_.empty()) throw Error("no usable image in " + dir.string(), dir.string());
  return out;
}

CaptionDataset CaptionDataset::from_parquet(const std::vector<fs::path>& files,
                                            const std::string& image_column,
                                            const std::string& caption_column) {
  if (files.empty()) throw Error("no parquet file given");
  CaptionDataset out;
  for (const auto& file : files) {
    for (auto& row : io::read_parquet_images(file, image_column, caption_column)) {
      const std::string where = file.string() + ":row " + std::to_string(row.row);
      const std::string name = row.path.empty() ? where : where + " (" + row.path + ")";
      if (!row.bytes) {
        skip(out.skipped_, name, "no image bytes in column '" + image_column + "'");
        continue;
      }
      out.examples_.push_back({name, std::move(row.caption),
                               file.filename().string() + ":row " + std::to_string(row.row),
                               std::move(row.bytes)});
    }
  }
  if (out.examples_.empty()) {
    std::string names;
    for (const auto& file : files) names += (names.empty() ? "" : ", ") + file.string();
    throw Error("no usable image: no row has image bytes", names);
  }
  return out;
}

CaptionDataset open_dataset(const fs::path& path, const std::string& image_column,
                            const std::string& caption_column, Confinement confinement) {
  if (!fs::exists(path)) throw Error("dataset not found", path.string());
  if (!fs::is_directory(path)) {
    if (lower(path.extension().string()) == ".parquet")
      return CaptionDataset::from_parquet({path}, image_column, caption_column);
    throw Error("a dataset is a folder of images or a .parquet file", path.string());
  }
  std::vector<fs::path> parquet;
  bool has_images = false;
  for (const auto& entry : fs::recursive_directory_iterator(path)) {
    if (!entry.is_regular_file()) continue;
    if (lower(entry.path().extension().string()) == ".parquet") parquet.push_back(entry.path());
    has_images = has_images || is_image_file(entry.path());
  }
  if (parquet.empty() || has_images)
    return CaptionDataset::from_folder(path, image_column, caption_column, confinement);
  std::sort(parquet.begin(), parquet.end());
  const DatasetRoot root(path, confinement);
  std::vector<Skipped> outside;
  std::erase_if(parquet,
                [&](const fs::path& file) { return skipped_outside(root, file, outside); });
  if (parquet.empty())
    throw Error("no usable parquet file: every one lies outside the dataset folder", path.string());
  CaptionDataset out = CaptionDataset::from_parquet(parquet, image_column, caption_column);
  out.skipped_.insert(out.skipped_.begin(), outside.begin(), outside.end());
  return out;
}

}  // namespace sdtune::data
