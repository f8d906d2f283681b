#include "sdtune/formats/single_file.h"

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

namespace sdtune::formats {
namespace fs = std::filesystem;
namespace {

SingleFileKeys keys_for(const io::ModelFolder& folder) {
  return SingleFileKeys(models::UNet2DConditionConfig::from_json(folder.component_config("unet")),
                        models::AutoencoderKLConfig::from_json(folder.component_config("vae")).vae);
}

// A tensor viewing mapped file data (no copy); valid while the file's mapping lives.
at::Tensor view_of(const io::TensorView& t) {
  return at::from_blob(const_cast<std::byte*>(t.data), t.shape,
                       at::TensorOptions().dtype(io::to_scalar_type(t.dtype)));
}

}  // namespace

void check_single_file_writable(const io::ModelFolder& folder) {
  // SD 2.x's text encoder (OpenCLIP ViT-H, gelu) has OpenCLIP's names in single files, not yet
  // written here; SD 1.x's CLIP ViT-L uses quick_gelu.
  if (folder.component_config("text_encoder").get_string("hidden_act", "quick_gelu") !=
      "quick_gelu")
    throw Error(
        "an SD 2.x text encoder (OpenCLIP names in single files) cannot be written yet: SD 1.x "
        "only",
        folder.root().string());
  keys_for(folder);  // the UNet's and VAE's configs parse
}

void write_single_file(const io::ModelFolder& folder, const fs::path& out,
                       std::optional<at::ScalarType> dtype) {
  check_single_file_writable(folder);
  const SingleFileKeys keys = keys_for(folder);
  std::vector<io::SafetensorsFile> files;  // mapped until written
  std::vector<at::Tensor> converted;       // only with --dtype
  std::vector<io::TensorWrite> writes;
  const std::set<std::string> ignored(clip_text_ignored_keys().begin(),
                                      clip_text_ignored_keys().end());
  for (const SingleFileComponent c :
       {SingleFileComponent::Unet, SingleFileComponent::Vae, SingleFileComponent::TextEncoder}) {
    const fs::path dir = folder.component_dir(component_name(c));
    for (const fs::path& path : io::find_weight_files(dir)) {
      files.push_back(io::SafetensorsFile::open(path));
      for (const io::TensorView& t : files.back().tensors()) {
        std::string name = t.name;
        if (c == SingleFileComponent::TextEncoder) {
          if (ignored.count(name)) continue;
          // transformers 5 saves CLIPTextModel without its "text_model." prefix.
          if (name.rfind("text_model.", 0) != 0) name = "text_model." + name;
        }
        const auto k = keys.to_single(c, name);
        if (!k)
          throw Error("no single-file name for this tensor (a module the SD 1.x layout lacks)",
                      path.string(), t.name);
        std::vector<int64_t> shape = t.shape;
        if (k->conv1x1) shape.insert(shape.end(), {1, 1});
        const at::ScalarType stored = io::to_scalar_type(t.dtype);
        if (dtype && at::isFloatingType(stored) && stored != *dtype) {
          converted.push_back(view_of(t).to(*dtype).contiguous());
          writes.push_back(
              {k->single, io::from_scalar_type(*dtype), shape, converted.back().data_ptr()});
        } else {
          writes.push_back({k->single, t.dtype, shape, t.data});
        }
      }
    }
  }
  io::write_safetensors(out, writes, {{"format", "pt"}});
}

SingleFileReport read_single_file(const fs::path& file, const io::ModelFolder& config,
                                  const fs::path& out, std::optional<at::ScalarType> dtype) {
  if (fs::exists(out))
    throw Error("already exists; remove it first or choose another name", out.string());
  const std::string ext = file.extension().string();
  if (ext == ".ckpt" || ext == ".pt" || ext == ".pth")
    throw Error(
        "pickled checkpoints (.ckpt) are not read yet; convert it to .safetensors with a tool you "
        "trust",
        file.string());
  const SingleFileKeys keys = keys_for(config);
  const io::SafetensorsFile f = io::SafetensorsFile::open(file);
  SingleFileReport report;
  std::map<SingleFileComponent, io::NamedTensors> parts;
  std::optional<at::ScalarType> stored;  // the file's floating-point dtype
  const auto& text_ignored = clip_text_ignored_keys();
  for (const io::TensorView& t : f.tensors()) {
    const auto k = keys.to_diffusers(t.name);
    if (!k ||
        (k->component == SingleFileComponent::TextEncoder &&
         std::find(text_ignored.begin(), text_ignored.end(), k->diffusers) != text_ignored.end())) {
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
    parts[k->component].emplace_back(k->diffusers, v);
    ++report.tensors;
  }
  for (const SingleFileComponent c :
       {SingleFileComponent::Unet, SingleFileComponent::Vae, SingleFileComponent::TextEncoder})
    if (parts[c].empty())
      throw Error(std::string("no ") + component_name(c) +
                      " tensors under their single-file names (an SD 1.x checkpoint has "
                      "model.diffusion_model., first_stage_model. and "
                      "cond_stage_model.transformer.)",
                  file.string());

  io::SavedWeights w;
  w.unet = std::move(parts[SingleFileComponent::Unet]);
  w.vae = std::move(parts[SingleFileComponent::Vae]);
  w.text_encoder = std::move(parts[SingleFileComponent::TextEncoder]);
  w.save_dtype = dtype.value_or(stored.value_or(at::kFloat));
  io::save_pipeline(config, out, w);
  // Loaded back strictly (each component at once, so memory stays one component's): names what
  // is missing or misshapen.
  try {
    const io::ModelFolder written = io::ModelFolder::open(out);
    const models::LoadOptions load{c10::kCPU, w.save_dtype, ""};
    models::load_unet(written, load);
    models::load_vae(written, load);
    models::load_text_encoder(written, load);
  } catch (const Error& e) {
    std::error_code ec;
    io::remove_tree(out, ec);
    throw Error(e.message(), file.string(), e.key());
  }
  return report;
}

}  // namespace sdtune::formats
