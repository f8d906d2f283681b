// sdtune convert SRC DST: a diffusers pipeline folder to a single-file checkpoint (A1111/ComfyUI
// layout) and back. DST's name says which: *.safetensors is a single file, anything else a folder.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "cli/commands.h"
#include "sdtune/error.h"
#include "sdtune/io/model_folder.h"
#include "sdtune/models/component_loader.h"
#include "sdtune/models/single_file.h"

namespace sdtune::cli {
namespace {
namespace fs = std::filesystem;

struct ConvertArgs {
  std::string src, dst, config, dtype;
  bool ema_weights = false;
};

bool single_file_name(const fs::path& p) {
  const std::string ext = p.extension().string();
  return ext == ".safetensors" || ext == ".ckpt";
}

void convert(const ConvertArgs& a) {
  std::optional<at::ScalarType> dtype;
  if (!a.dtype.empty()) dtype = models::parse_dtype(a.dtype);
  const bool src_is_file = fs::is_regular_file(a.src);
  if (!src_is_file && !fs::is_directory(a.src)) throw Error("not found", a.src);
  if (!src_is_file && single_file_name(a.dst)) {
    models::write_single_file(io::ModelFolder::open(a.src), a.dst, dtype);
    std::printf("wrote %s\n", a.dst.c_str());
    return;
  }
  if (src_is_file && !single_file_name(a.dst)) {
    if (a.config.empty())
      throw Error(
          "--config DIR is needed: a diffusers folder of the same architecture, whose configs, "
          "tokenizer and scheduler the new folder takes (its weights are not read)");
    const models::SingleFileReport r = models::read_single_file(
        a.src, io::ModelFolder::open(a.config), a.dst, dtype, a.ema_weights);
    std::printf("wrote %s: %lld tensors, %lld other keys ignored\n", a.dst.c_str(),
                static_cast<long long>(r.tensors), static_cast<long long>(r.ignored));
    return;
  }
  throw Error(src_is_file ? "both are single files: DST must be a folder name (not *.safetensors)"
                          : "both are folders: DST must be a single file (*.safetensors)",
              a.dst);
}

}  // namespace

void add_convert(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "convert",
      "Convert a diffusers pipeline folder to a single-file checkpoint (A1111/ComfyUI) or back");
  auto a = std::make_shared<ConvertArgs>();
  cmd->add_option("SRC", a->src, "Pipeline folder or single .safetensors file")->required();
  cmd->add_option("DST", a->dst, "Output: *.safetensors for a single file, else a folder")
      ->required();
  cmd->add_option("--config", a->config,
                  "For a single file: the diffusers folder whose configs, tokenizer and "
                  "scheduler the new folder takes");
  cmd->add_option("--dtype", a->dtype, "fp32, fp16 or bf16 (default: as stored)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  cmd->add_flag("--ema-weights", a->ema_weights,
                "For a single file with EMA weights (model_ema.*): take the UNet from them");
  cmd->callback([a] { convert(*a); });
}

}  // namespace sdtune::cli
