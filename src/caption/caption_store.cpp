#include "sdtune/caption/caption_store.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "sdtune/data/caption_dataset.h"
#include "sdtune/data/dataset_root.h"
#include "sdtune/error.h"
#include "sdtune/io/atomic_write.h"
#include "sdtune/io/json_config.h"
#include "sdtune/io/read_file.h"
#include "sdtune/warning.h"

namespace sdtune::caption {
namespace fs = std::filesystem;
namespace {

bool non_empty_caption(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>().find_first_not_of(" \t\r\n") != std::string::npos;
  return v.is_array() && !v.empty() && non_empty_caption(v[0]);
}

void write_text(const fs::path& path, const std::string& text) {
  io::write_file_atomically(path, [&](const fs::path& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    out << text;
    if (!out.flush()) throw Error("cannot write", tmp.string());
  });
}

}  // namespace

CaptionStore CaptionStore::open(const fs::path& dir, bool sidecar) {
  if (!fs::is_directory(dir)) throw Error("dataset folder not found", dir.string());
  CaptionStore s;
  s.dir_ = dir;
  s.sidecar_ = sidecar;
  const data::DatasetRoot root(dir, data::Confinement::DatasetFolder);
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (!entry.is_regular_file() || !data::is_image_file(entry.path())) continue;
    if (const std::string why = root.refusal(entry.path()); !why.empty()) {
      warn("skipping " + entry.path().string() + ": " + why);
      continue;
    }
    s.images_.push_back(entry.path().lexically_relative(dir));
  }
  std::sort(s.images_.begin(), s.images_.end());

  const fs::path metadata = dir / "metadata.jsonl";
  if (!sidecar && fs::exists(metadata)) {
    if (const std::string why = root.refusal(metadata); !why.empty())
      throw Error("the dataset's metadata.jsonl is " + why, metadata.string());
    std::istringstream in(io::read_file(metadata));
    std::string line;
    for (int64_t number = 1; std::getline(in, line); ++number) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = "line " + std::to_string(number);
      nlohmann::json row;
      try {
        row = nlohmann::json::parse(line, io::json_depth_limit(metadata.string() + " " + where));
      } catch (const nlohmann::json::exception& e) {
        throw Error(where + " is not valid JSON: " + e.what(), metadata.string(), where);
      }
      if (!row.is_object() || !row.contains("file_name") || !row["file_name"].is_string())
        throw Error(where + " is not a JSON object with a \"file_name\"", metadata.string(), where);
      const std::string name = fs::path(row["file_name"].get<std::string>()).lexically_normal();
      s.row_of_[name] = s.rows_.size();
      s.rows_.push_back(std::move(row));
    }
  }
  if (sidecar)
    for (const auto& image : s.images_) {
      fs::path txt = dir / image;
      txt.replace_extension(".txt");
      if (fs::is_regular_file(txt) && root.refusal(txt).empty())
        s.text_[image] = io::read_file(txt);
    }
  return s;
}

bool CaptionStore::has_caption(const fs::path& image) const {
  if (sidecar_) {
    const auto it = text_.find(image);
    return it != text_.end() && non_empty_caption(nlohmann::json(it->second));
  }
  const auto it = row_of_.find(image.lexically_normal().string());
  return it != row_of_.end() && rows_[it->second].contains("text") &&
         non_empty_caption(rows_[it->second]["text"]);
}

void CaptionStore::set(const fs::path& image, const std::string& caption) {
  changed_.push_back(image);
  if (sidecar_) {
    text_[image] = caption;
    return;
  }
  const std::string name = image.lexically_normal().string();
  const auto it = row_of_.find(name);
  if (it != row_of_.end()) {
    rows_[it->second]["text"] = caption;
  } else {
    row_of_[name] = rows_.size();
    rows_.push_back({{"file_name", name}, {"text", caption}});
  }
}

void CaptionStore::save() {
  if (changed_.empty()) return;
  if (sidecar_) {
    for (const auto& image : changed_) {
      fs::path txt = dir_ / image;
      txt.replace_extension(".txt");
      write_text(txt, text_.at(image) + "\n");
    }
  } else {
    std::string text;
    for (const auto& row : rows_)
      text += row.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    write_text(dir_ / "metadata.jsonl", text);
  }
  changed_.clear();
}

}  // namespace sdtune::caption
