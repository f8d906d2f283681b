#include "sdtune/train/metrics_log.h"

#include "sdtune/error.h"

namespace sdtune::train {

MetricsLog::MetricsLog(const std::filesystem::path& dir)
    : path_(dir / "metrics.jsonl"), tensorboard_(dir) {
  file_ = std::fopen(path_.c_str(), "a");
  if (!file_) throw Error("cannot open the metrics log for writing", path_.string());
}

MetricsLog::~MetricsLog() {
  if (file_) std::fclose(file_);
}

void MetricsLog::write(const nlohmann::json& record) {
  // Non-finite values are not JSON; nlohmann writes them as null, which readers handle.
  const std::string line = record.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0)
    throw Error("cannot write the metrics log", path_.string());
  const int64_t step = record.value("step", int64_t{0});
  for (const auto& [key, value] : record.items())
    if (key != "step" && value.is_number())
      tensorboard_.add_scalar("train/" + key, value.get<double>(), step);
  tensorboard_.flush();
}

void MetricsLog::image(const std::string& tag, const at::Tensor& rgb, int64_t step) {
  tensorboard_.add_image(tag, rgb, step);
  tensorboard_.flush();
}

}  // namespace sdtune::train
