#include "sdtune/models/single_file.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "sdtune/error.h"
#include "sdtune/formats/clip_text_keys.h"
#include "sdtune/formats/single_file_configs.h"
#include "sdtune/formats/single_file_keys.h"
#include "sdtune/io/content_hash.h"
#include "sdtune/io/pickle_checkpoint.h"
#include "sdtune/io/pipeline_writer.h"
#include "sdtune/io/remove_tree.h"
#include "sdtune/io/safetensors.h"
#include "sdtune/io/tensor.h"
#include "sdtune/io/tensor_cache.h"
#include "sdtune/io/yaml_document.h"
#include "sdtune/models/component_loader.h"
#include "sdtune/text/clip_vocabulary.h"

namespace sdtune::models {
namespace fs = std::filesystem;
namespace {

using formats::clip_text_ignored_keys;
using formats::component_name;
using formats::qkv_names;
using formats::SingleFileComponent;
using formats::SingleFileKeys;
using formats::SingleFileLayout;
using formats::TextLayout;
using C = SingleFileComponent;

bool has_second_encoder(const io::ModelFolder& folder) {
  return folder.has_component("text_encoder_2");
}

SingleFileLayout layout_of(const io::ModelFolder& folder) {
  std::optional<io::JsonConfig> second;
  if (has_second_encoder(folder)) second = folder.component_config("text_encoder_2");
  return SingleFileLayout::from_configs(
      folder.component_config("unet"), folder.component_config("vae"),
      folder.component_config("text_encoder"), second ? &*second : nullptr);
}

// The components a layout has, in file order.
std::vector<C> components_of(const SingleFileLayout& layout) {
  if (layout.text == TextLayout::Sdxl) return {C::Unet, C::Vae, C::TextEncoder, C::TextEncoder2};
  return {C::Unet, C::Vae, C::TextEncoder};
}

const char* architecture_name(TextLayout text) {
  switch (text) {
    case TextLayout::Clip:
      return "SD 1.x";
    case TextLayout::OpenClip:
      return "SD 2.x";
    case TextLayout::Sdxl:
      return "SDXL";
  }
  return "?";
}

// A tensor viewing mapped file data (no copy); valid while the file's mapping lives.
at::Tensor view_of(const io::TensorView& t) {
  return at::from_blob(const_cast<std::byte*>(t.data), t.shape,
                       at::TensorOptions().dtype(io::to_scalar_type(t.dtype)));
}

}  // namespace

void check_single_file_writable(const io::ModelFolder& folder) {
  layout_of(folder);  // the configs parse into a layout
}

void write_single_file(const io::ModelFolder& folder, const fs::path& out,
                       std::optional<at::ScalarType> dtype) {
  const SingleFileLayout layout = layout_of(folder);
  const SingleFileKeys keys(layout);
  std::vector<io::SafetensorsFile> files;  // mapped until written
  std::vector<at::Tensor> made;            // converted or fused tensors, alive until written
  std::vector<io::TensorWrite> writes;
  auto write = [&](const std::string& name, const at::Tensor& t, std::vector<int64_t> shape) {
    made.push_back(dtype && at::isFloatingType(t.scalar_type()) ? t.to(*dtype).contiguous()
                                                                : t.contiguous());
    writes.push_back({name, io::from_scalar_type(made.back().scalar_type()), std::move(shape),
                      made.back().data_ptr()});
  };
  std::map<std::string, std::vector<at::Tensor>> fused;  // OpenCLIP's in_proj: q, k, v
  const std::set<std::string> ignored(clip_text_ignored_keys().begin(),
                                      clip_text_ignored_keys().end());
  for (const C c : components_of(layout)) {
    const fs::path dir = folder.component_dir(component_name(c));
    for (const fs::path& path : io::find_weight_files(dir)) {
      files.push_back(io::SafetensorsFile::open(path));
      for (const io::TensorView& t : files.back().tensors()) {
        std::string name = t.name;
        if (c == C::TextEncoder || c == C::TextEncoder2) {
          if (ignored.count(name)) continue;
          // transformers 5 saves CLIPTextModel without its "text_model." prefix.
          if (name.rfind("text_model.", 0) != 0 && name != "text_projection.weight")
            name = "text_model." + name;
        }
        const auto k = keys.to_single(c, name);
        if (!k)
          throw Error("no single-file name for this tensor (a module the SD layout lacks)",
                      path.string(), t.name);
        std::vector<int64_t> shape = t.shape;
        if (k->conv1x1) shape.insert(shape.end(), {1, 1});
        if (k->transposed) {
          if (shape.size() != 2) throw Error("expected a matrix", path.string(), t.name);
          write(k->single, view_of(t).t(), {shape[1], shape[0]});
          continue;
        }
        if (k->fused_qkv) {
          auto& qkv = fused[k->single];
          qkv.resize(3);
          qkv[k->part] = view_of(t).clone();
          io::release_mapped_pages(t.data, t.nbytes);
          continue;
        }
        const at::ScalarType stored = io::to_scalar_type(t.dtype);
        if (dtype && at::isFloatingType(stored) && stored != *dtype) {
          // The converted copy is kept; the source's pages go, so that memory holds the output
          // and not the input too.
          write(k->single, view_of(t), shape);
          io::release_mapped_pages(t.data, t.nbytes);
        } else  // straight from the mapped file
          writes.push_back({k->single, t.dtype, shape, t.data});
      }
    }
  }
  for (const auto& [name, qkv] : fused) {
    for (const auto& part : qkv)
      if (!part.defined()) throw Error("q, k or v projection missing for " + name, "", name);
    const at::Tensor stacked = at::cat(qkv, 0);
    write(name, stacked, stacked.sizes().vec());
  }
  io::write_safetensors(out, writes, {{"format", "pt"}});
}

namespace {

// A single file's tensors in file order: views of the mapped .safetensors, or the tensors a
// pickle checkpoint holds.
struct FileTensors {
  std::optional<io::SafetensorsFile> mapped;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::unordered_map<std::string, size_t> index;

  static FileTensors open(const fs::path& file) {
    FileTensors f;
    if (io::pickle_checkpoint_name(file)) {
      f.tensors = io::read_pickle_checkpoint(file).tensors;
    } else {
      f.mapped = io::SafetensorsFile::open(file);
      for (const io::TensorView& t : f.mapped->tensors())
        f.tensors.emplace_back(t.name, view_of(t));
    }
    for (size_t i = 0; i < f.tensors.size(); ++i) f.index[f.tensors[i].first] = i;
    return f;
  }
  const at::Tensor* find(const std::string& name) const {
    const auto it = index.find(name);
    return it == index.end() ? nullptr : &tensors[it->second].second;
  }
  std::map<std::string, std::vector<int64_t>> shapes() const {
    std::map<std::string, std::vector<int64_t>> out;
    for (const auto& [name, t] : tensors) out[name] = t.sizes().vec();
    return out;
  }
};

void write_text(const fs::path& path, std::string_view text) {
  std::ofstream out(path, std::ios::binary);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  if (!out.flush()) throw Error("cannot write", path.string());
}

// A diffusers folder without weights: what save_pipeline takes its configs, tokenizer and
// scheduler from.
void write_config_folder(const formats::SingleFileConfigs& c, const fs::path& dir) {
  for (const char* sub : {"unet", "vae", "text_encoder", "scheduler", "tokenizer"})
    fs::create_directories(dir / sub);
  if (!c.text_encoder_2.is_null()) {
    for (const char* sub : {"text_encoder_2", "tokenizer_2"}) fs::create_directories(dir / sub);
    write_text(dir / "text_encoder_2/config.json", c.text_encoder_2.dump(2));
    write_text(dir / "tokenizer_2/tokenizer_config.json", c.tokenizer_2_config.dump(2));
    write_text(dir / "tokenizer_2/special_tokens_map.json", c.special_tokens_map_2.dump(2));
    write_text(dir / "tokenizer_2/vocab.json", text::clip_vocab_json());
    write_text(dir / "tokenizer_2/merges.txt", text::clip_merges_txt());
  }
  write_text(dir / "model_index.json", c.model_index.dump(2));
  write_text(dir / "unet/config.json", c.unet.dump(2));
  write_text(dir / "vae/config.json", c.vae.dump(2));
  write_text(dir / "text_encoder/config.json", c.text_encoder.dump(2));
  write_text(dir / "scheduler/scheduler_config.json", c.scheduler.dump(2));
  write_text(dir / "tokenizer/tokenizer_config.json", c.tokenizer_config.dump(2));
  write_text(dir / "tokenizer/special_tokens_map.json", c.special_tokens_map.dump(2));
  write_text(dir / "tokenizer/vocab.json", text::clip_vocab_json());
  write_text(dir / "tokenizer/merges.txt", text::clip_merges_txt());
}

// A1111 keeps a file's original LDM config beside it as MODEL.yaml; empty when there is none.
fs::path sidecar_config(const fs::path& file) {
  fs::path yaml = file;
  yaml.replace_extension(".yaml");
  return fs::is_regular_file(yaml) ? yaml : fs::path();
}

struct RemovedAtExit {
  fs::path path;
  ~RemovedAtExit() {
    std::error_code ec;
    if (!path.empty()) io::remove_tree(path, ec);
  }
};

}  // namespace

SingleFileReport read_single_file(const fs::path& file, const fs::path& out,
                                  const SingleFileOptions& options,
                                  std::optional<at::ScalarType> dtype) {
  if (fs::exists(out))
    throw Error("already exists; remove it first or choose another name", out.string());
  if (!fs::is_regular_file(file)) throw Error("not found", file.string());
  // The file stays open (mapped, or its tensors read) only while the folder is written from it:
  // the check below then holds one component's weights, not those and the file's.
  SingleFileReport report;
  RemovedAtExit inferred;
  std::optional<io::ModelFolder> config;
  const at::ScalarType saved = [&] {
    const FileTensors f = FileTensors::open(file);
    std::vector<std::string> names;
    for (const auto& [name, t] : f.tensors) names.push_back(name);
    const std::optional<TextLayout> text = formats::single_file_text_layout(names);
    if (!text)
      throw Error(
          "no text encoder under its single-file names (cond_stage_model., conditioner.embedders.)",
          file.string());
    report.architecture = architecture_name(*text);
    if (options.config.empty()) {
      // Configs from the tensors (and the sidecar LDM config), written beside `out` for
      // save_pipeline to copy.
      std::optional<nlohmann::json> ldm;
      if (const fs::path yaml = sidecar_config(file); !yaml.empty()) {
        ldm = io::read_yaml_file(yaml);
        report.configs_from = yaml.filename().string();
      }
      const formats::SingleFileConfigs c = formats::infer_single_file_configs(
          f.shapes(), options.prediction_type, file.string(), ldm ? &*ldm : nullptr);
      inferred.path = out.string() + ".configs-" + std::to_string(::getpid());
      io::remove_tree(inferred.path);
      write_config_folder(c, inferred.path);
      config = io::ModelFolder::open(inferred.path);
    } else {
      config = io::ModelFolder::open(options.config);
      report.configs_from = options.config.string();
    }
    const SingleFileLayout layout = layout_of(*config);
    const SingleFileKeys keys(layout);
    // The file's text encoders must be the config's kind.
    if (*text != layout.text)
      throw Error(std::string("the file's text encoders are ") + architecture_name(*text) +
                      "'s, but --config's are " + architecture_name(layout.text) +
                      "'s: give a config folder of the file's architecture",
                  file.string());
    std::map<C, io::NamedTensors> parts;
    std::optional<at::ScalarType> stored;  // the file's floating-point dtype
    const auto& text_ignored = clip_text_ignored_keys();
    int64_t ema_found = 0;
    for (const auto& [file_name, file_tensor] : f.tensors) {
      const auto k = keys.to_diffusers(file_name);
      // The UNet's EMA copy, when asked for, in place of each UNet tensor.
      const at::Tensor* ema = nullptr;
      std::string name = file_name;
      if (k && options.ema_weights && k->component == C::Unet) {
        std::string flat = "model_ema." + file_name.substr(std::string("model.").size());
        flat.erase(std::remove(flat.begin() + 10, flat.end(), '.'), flat.end());
        ema = f.find(flat);
        if (!ema)
          throw Error("no EMA copy of this UNet tensor (" + flat + ")", file.string(), file_name);
        if (!ema->sizes().equals(file_tensor.sizes()))
          throw Error("the EMA copy's shape differs", file.string(), flat);
        name = flat;
        ++ema_found;
      }
      if (!k ||
          std::find(text_ignored.begin(), text_ignored.end(), k->diffusers) != text_ignored.end()) {
        ++report.ignored;
        continue;
      }
      at::Tensor v = ema ? *ema : file_tensor;
      if (k->conv1x1) {
        if (v.dim() != 4 || v.size(2) != 1 || v.size(3) != 1)
          throw Error("expected a 1×1 convolution, got shape " + io::shape_string(v.sizes()),
                      file.string(), name);
        v = v.reshape({v.size(0), v.size(1)});
      }
      if (k->transposed) {
        if (v.dim() != 2)
          throw Error("expected a matrix, got shape " + io::shape_string(v.sizes()), file.string(),
                      name);
        v = v.t().contiguous();
      }
      if (at::isFloatingType(v.scalar_type()) && !stored) stored = v.scalar_type();
      if (k->fused_qkv) {  // views of the three thirds
        if (v.dim() < 1 || v.size(0) % 3 != 0)
          throw Error("a fused q/k/v projection needs a first dimension divisible by 3, got " +
                          io::shape_string(v.sizes()),
                      file.string(), name);
        const auto names = qkv_names(k->diffusers);
        const int64_t n = v.size(0) / 3;
        for (int64_t i = 0; i < 3; ++i)
          parts[k->component].emplace_back(names[i], v.narrow(0, i * n, n));
      } else {
        parts[k->component].emplace_back(k->diffusers, v);
      }
      ++report.tensors;
    }
    // The EMA copies taken, and the other model_ema.* (decay, num_updates), count as used.
    if (options.ema_weights) report.ignored -= ema_found;
    for (const C c : components_of(layout))
      if (parts[c].empty())
        throw Error(std::string("no ") + component_name(c) +
                        " tensors under their single-file names (model.diffusion_model., "
                        "first_stage_model., cond_stage_model., conditioner.embedders.)",
                    file.string());

    io::SavedWeights w;
    w.unet = std::move(parts[C::Unet]);
    w.vae = std::move(parts[C::Vae]);
    w.text_encoder = std::move(parts[C::TextEncoder]);
    if (layout.text == TextLayout::Sdxl) w.text_encoder_2 = std::move(parts[C::TextEncoder2]);
    w.save_dtype = dtype.value_or(stored.value_or(at::kFloat));
    io::save_pipeline(*config, out, w);
    return w.save_dtype;
  }();
  // Loaded back strictly (each component at once, so memory stays one component's): names what
  // is missing or misshapen.
  try {
    const io::ModelFolder written = io::ModelFolder::open(out);
    const LoadOptions load{c10::kCPU, saved, ""};
    load_unet(written, load);
    load_vae(written, load);
    load_text_encoder(written, load);
    if (has_second_encoder(written)) load_text_encoder(written, load, "text_encoder_2");
  } catch (const Error& e) {
    std::error_code ec;
    io::remove_tree(out, ec);
    throw Error(e.message(), file.string(), e.key());
  }
  return report;
}

io::ModelFolder open_model(const fs::path& path, const SingleFileOptions& options) {
  if (!fs::is_regular_file(path)) return io::ModelFolder::open(path);
  // The cache entry is named by what the folder is made from: this file as it is now (path, size,
  // modification time) and the options. A changed file gets a new entry.
  const fs::path file = fs::canonical(path);
  io::ContentHash key;
  key.field("single-file folder v1").field(file.string());
  key.field(static_cast<int64_t>(fs::file_size(file)));
  key.field(static_cast<int64_t>(fs::last_write_time(file).time_since_epoch().count()));
  key.field(options.config.empty() ? "" : fs::canonical(options.config).string());
  key.field(options.prediction_type).field(options.ema_weights ? "ema" : "");
  if (const fs::path yaml = sidecar_config(file); !yaml.empty() && options.config.empty()) {
    key.field(static_cast<int64_t>(fs::file_size(yaml)));
    key.field(static_cast<int64_t>(fs::last_write_time(yaml).time_since_epoch().count()));
  }
  const fs::path dir = io::default_cache_dir() / "single-file" /
                       (file.stem().string() + "-" + key.hex().substr(0, 16));
  if (!fs::exists(dir / "model_index.json")) {
    fs::create_directories(dir.parent_path());
    std::fprintf(stderr, "sdtune: reading %s into %s (once: later runs reuse it)\n", file.c_str(),
                 dir.c_str());
    // Made under a temporary name and renamed: a folder under its own name is complete. Another
    // process that got there first wins, and this copy goes.
    const fs::path tmp = dir.string() + ".tmp-" + std::to_string(::getpid());
    {
      std::error_code ec;
      io::remove_tree(tmp, ec);
    }
    read_single_file(file, tmp, options);
    std::error_code ec;
    fs::rename(tmp, dir, ec);
    if (ec) {
      io::remove_tree(tmp, ec);
      if (!fs::exists(dir / "model_index.json"))
        throw Error("cannot put the converted folder in place", dir.string());
    }
  }
  return io::ModelFolder::open(dir);
}

}  // namespace sdtune::models
