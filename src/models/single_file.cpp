#include "sdtune/models/single_file.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "sdtune/error.h"
#include "sdtune/formats/clip_text_keys.h"
#include "sdtune/formats/single_file_keys.h"
#include "sdtune/io/pipeline_writer.h"
#include "sdtune/io/remove_tree.h"
#include "sdtune/io/safetensors.h"
#include "sdtune/io/tensor.h"
#include "sdtune/models/component_loader.h"

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

SingleFileLayout layout_of(const io::ModelFolder& folder) {
  return SingleFileLayout::from_configs(folder.component_config("unet"),
                                        folder.component_config("vae"),
                                        folder.component_config("text_encoder"));
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
  const SingleFileKeys keys(layout_of(folder));
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
  for (const C c : {C::Unet, C::Vae, C::TextEncoder}) {
    const fs::path dir = folder.component_dir(component_name(c));
    for (const fs::path& path : io::find_weight_files(dir)) {
      files.push_back(io::SafetensorsFile::open(path));
      for (const io::TensorView& t : files.back().tensors()) {
        std::string name = t.name;
        if (c == C::TextEncoder) {
          if (ignored.count(name)) continue;
          // transformers 5 saves CLIPTextModel without its "text_model." prefix.
          if (name.rfind("text_model.", 0) != 0) name = "text_model." + name;
        }
        const auto k = keys.to_single(c, name);
        if (!k)
          throw Error("no single-file name for this tensor (a module the SD layout lacks)",
                      path.string(), t.name);
        std::vector<int64_t> shape = t.shape;
        if (k->conv1x1) shape.insert(shape.end(), {1, 1});
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

SingleFileReport read_single_file(const fs::path& file, const io::ModelFolder& config,
                                  const fs::path& out, std::optional<at::ScalarType> dtype,
                                  bool ema_weights) {
  if (fs::exists(out))
    throw Error("already exists; remove it first or choose another name", out.string());
  const std::string ext = file.extension().string();
  if (ext == ".ckpt" || ext == ".pt" || ext == ".pth")
    throw Error(
        "pickled checkpoints (.ckpt) are not read yet; convert it to .safetensors with a tool you "
        "trust",
        file.string());
  const SingleFileLayout layout = layout_of(config);
  const SingleFileKeys keys(layout);
  // The file stays mapped (and its pages resident) only while the folder is written from it: the
  // check below then holds one component's weights, not those and the file's.
  SingleFileReport report;
  const at::ScalarType saved = [&] {
    const io::SafetensorsFile f = io::SafetensorsFile::open(file);
    // The file's text encoder must be the config's kind.
    const bool open_clip = f.find("cond_stage_model.model.token_embedding.weight") != nullptr;
    if (open_clip != (layout.text == TextLayout::OpenClip))
      throw Error(std::string("the file's text encoder is ") +
                      (open_clip ? "OpenCLIP's (SD 2.x)" : "not OpenCLIP's (SD 1.x)") +
                      ", but --config's is " + (open_clip ? "SD 1.x's" : "SD 2.x's") +
                      ": give a config folder of the file's architecture",
                  file.string());
    std::map<C, io::NamedTensors> parts;
    std::optional<at::ScalarType> stored;  // the file's floating-point dtype
    const auto& text_ignored = clip_text_ignored_keys();
    int64_t ema_found = 0;
    for (const io::TensorView& file_tensor : f.tensors()) {
      const auto k = keys.to_diffusers(file_tensor.name);
      // The UNet's EMA copy, when asked for, in place of each UNet tensor.
      const io::TensorView* ema = nullptr;
      if (k && ema_weights && k->component == C::Unet) {
        std::string flat = "model_ema." + file_tensor.name.substr(std::string("model.").size());
        flat.erase(std::remove(flat.begin() + 10, flat.end(), '.'), flat.end());
        ema = f.find(flat);
        if (!ema)
          throw Error("no EMA copy of this UNet tensor (" + flat + ")", file.string(),
                      file_tensor.name);
        if (ema->shape != file_tensor.shape)
          throw Error("the EMA copy's shape differs", file.string(), flat);
        ++ema_found;
      }
      const io::TensorView& t = ema ? *ema : file_tensor;
      if (!k ||
          (k->component == C::TextEncoder && std::find(text_ignored.begin(), text_ignored.end(),
                                                       k->diffusers) != text_ignored.end())) {
        ++report.ignored;
        continue;
      }
      at::Tensor v = view_of(t);
      if (k->conv1x1) {
        if (v.dim() != 4 || v.size(2) != 1 || v.size(3) != 1)
          throw Error("expected a 1×1 convolution, got shape " + io::shape_string(v.sizes()),
                      file.string(), t.name);
        v = v.reshape({v.size(0), v.size(1)});
      }
      if (at::isFloatingType(v.scalar_type()) && !stored) stored = v.scalar_type();
      if (k->fused_qkv) {  // views of the three thirds
        if (v.dim() < 1 || v.size(0) % 3 != 0)
          throw Error("a fused q/k/v projection needs a first dimension divisible by 3, got " +
                          io::shape_string(v.sizes()),
                      file.string(), t.name);
        const auto names = qkv_names(k->diffusers);
        const int64_t n = v.size(0) / 3;
        for (int64_t i = 0; i < 3; ++i)
          parts[C::TextEncoder].emplace_back(names[i], v.narrow(0, i * n, n));
      } else {
        parts[k->component].emplace_back(k->diffusers, v);
      }
      ++report.tensors;
    }
    // The EMA copies taken, and the other model_ema.* (decay, num_updates), count as used.
    if (ema_weights) report.ignored -= ema_found;
    for (const C c : {C::Unet, C::Vae, C::TextEncoder})
      if (parts[c].empty())
        throw Error(std::string("no ") + component_name(c) +
                        " tensors under their single-file names (model.diffusion_model., "
                        "first_stage_model., cond_stage_model.)",
                    file.string());

    io::SavedWeights w;
    w.unet = std::move(parts[C::Unet]);
    w.vae = std::move(parts[C::Vae]);
    w.text_encoder = std::move(parts[C::TextEncoder]);
    w.save_dtype = dtype.value_or(stored.value_or(at::kFloat));
    io::save_pipeline(config, out, w);
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
  } catch (const Error& e) {
    std::error_code ec;
    io::remove_tree(out, ec);
    throw Error(e.message(), file.string(), e.key());
  }
  return report;
}

}  // namespace sdtune::models
