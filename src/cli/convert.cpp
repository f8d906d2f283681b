// sdtune convert SRC DST: a diffusers pipeline folder to a single-file checkpoint (A1111/ComfyUI
// layout) and back. DST's name says which: *.safetensors is a single file, anything else a folder.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "cli/commands.h"
#include "cli/generation_options.h"
#include "sdtune/error.h"
#include "sdtune/io/model_folder.h"
#include "sdtune/io/pickle_checkpoint.h"
#include "sdtune/models/component_loader.h"
#include "sdtune/models/single_file.h"

namespace sdtune::cli {
namespace {
namespace fs = std::filesystem;

struct ConvertArgs {
  std::string src, dst, dtype;
  models::SingleFileOptions file;
};

bool single_file_name(const fs::path& p) {
  return p.extension() == ".safetensors";
}

void convert(const ConvertArgs& a) {
  std::optional<at::ScalarType> dtype;
  if (!a.dtype.empty()) dtype = models::parse_dtype(a.dtype);
  const bool src_is_file = fs::is_regular_file(a.src);
  if (!src_is_file && !fs::is_directory(a.src)) throw Error("not found", a.src);
  if (io::pickle_checkpoint_name(a.dst))
    throw Error("sdtune writes single files as .safetensors only, never as pickles", a.dst);
  if (!src_is_file && single_file_name(a.dst)) {
    models::write_single_file(io::ModelFolder::open(a.src), a.dst, dtype);
    std::printf("wrote %s\n", a.dst.c_str());
    return;
  }
  if (src_is_file && !single_file_name(a.dst)) {
    const models::SingleFileReport r = models::read_single_file(a.src, a.dst, a.file, dtype);
    std::printf("wrote %s (%s, configs from %s): %lld tensors, %lld other keys ignored\n",
                a.dst.c_str(), r.architecture.c_str(),
                r.configs_from.empty() ? "the tensors" : r.configs_from.c_str(),
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
  cmd->add_option("SRC", a->src, "Pipeline folder, or single file (.safetensors, .ckpt)")
      ->required();
  cmd->add_option("DST", a->dst, "Output: *.safetensors for a single file, else a folder")
      ->required();
  cmd->add_option("--config", a->file.config,
                  "For a single file: a diffusers folder of the same architecture whose configs, "
                  "tokenizer and scheduler the new folder takes (default: read from the tensors, "
                  "with sdtune's own SD 1.x/2.x configs)");
  cmd->add_option("--dtype", a->dtype, "fp32, fp16 or bf16 (default: as stored)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  add_single_file_options(cmd, a->file);
  cmd->callback([a] { convert(*a); });
}

}  // namespace sdtune::cli
