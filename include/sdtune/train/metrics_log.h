#pragma once
// Where a run's numbers go: OUT/logs/metrics.jsonl (one JSON object per logged step, appended
// across resumes) and TensorBoard event files in OUT/logs/.
#include <cstdio>
#include <filesystem>
#include <string>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "sdtune/io/tensorboard_writer.h"

namespace sdtune::train {

class MetricsLog {
 public:
  explicit MetricsLog(const std::filesystem::path& dir);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  // Appends one line to metrics.jsonl and flushes it (a killed run keeps everything logged so
  // far); every number in `record` except "step" also becomes the TensorBoard scalar
  // "train/<key>" at record["step"].
  void write(const nlohmann::json& record);

  // A TensorBoard image (uint8 [H,W,3]), e.g. the validation grid.
  void image(const std::string& tag, const at::Tensor& rgb, int64_t step);

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
  io::TensorBoardWriter tensorboard_;
};

}  // namespace sdtune::train
