#include "sdtune/io/pipeline_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <vector>

#include "sdtune/error.h"
#include "sdtune/io/atomic_write.h"
#include "sdtune/io/tensor.h"

namespace sdtune::io {
namespace fs = std::filesystem;
namespace {

// The weight file each rewritten component gets (diffusers' and transformers' default names).
const char* weight_file_name(const std::string& component) {
  return component.starts_with("text_encoder") ? "model.safetensors"
                                               : "diffusion_pytorch_model.safetensors";
}

// Copies a file's bytes. Symbolic links are followed: a Hugging Face cache snapshot is made of
// links into its blob store, and the saved folder must stand on its own.
// A read/write loop, not fs::copy_file, whose sendfile path reports a short copy as EIO:
// a full disk or a file-size limit must be named as such ("No space left on device").
void copy_regular_file(const fs::path& from, const fs::path& to) {
  if (!fs::is_regular_file(from)) throw Error("file not found", from);
  const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) throw Error(std::string("cannot open: ") + std::strerror(errno), from);
  const int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) {
    const int err = errno;
    ::close(in);
    throw Error(std::string("cannot create: ") + std::strerror(err), to);
  }
  std::vector<char> buffer(1 << 22);
  int read_error = 0, write_error = 0;
  while (read_error == 0 && write_error == 0) {
    const ssize_t n = ::read(in, buffer.data(), buffer.size());
    if (n == 0) break;
    if (n < 0) {
      if (errno != EINTR) read_error = errno;
      continue;
    }
    for (ssize_t done = 0; done < n && write_error == 0;) {
      const ssize_t w = ::write(out, buffer.data() + done, static_cast<size_t>(n - done));
      if (w >= 0)
        done += w;
      else if (errno != EINTR)
        write_error = errno;
    }
  }
  ::close(in);
  if (::close(out) != 0 && write_error == 0) write_error = errno;
  if (read_error != 0) throw Error(std::string("cannot read: ") + std::strerror(read_error), from);
  if (write_error != 0) throw Error(std::string("cannot write: ") + std::strerror(write_error), to);
}

void copy_tree(const fs::path& from, const fs::path& to) {
  fs::create_directory(to);
  for (const auto& entry : fs::directory_iterator(from)) {
    const fs::path target = to / entry.path().filename();
    if (entry.is_directory())
      copy_tree(entry.path(), target);
    else
      copy_regular_file(entry.path(), target);
  }
}

void write_weights(const fs::path& path, const NamedTensors& tensors, at::ScalarType dtype) {
  NamedTensors converted;
  converted.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    if (!tensor.defined()) throw Error("undefined tensor", path, name);
    converted.emplace_back(name, tensor.is_floating_point() ? tensor.to(dtype) : tensor);
  }
  write_tensors(path, converted, {{"format", "pt"}});
}

}  // namespace

void write_pipeline_folder(const ModelFolder& base, const fs::path& dir,
                           const SavedWeights& weights) {
  const std::map<std::string, const std::optional<NamedTensors>*> rewritten{
      {"unet", &weights.unet},
      {"text_encoder", &weights.text_encoder},
      {"text_encoder_2", &weights.text_encoder_2},
      {"vae", &weights.vae}};
  for (const auto& [name, tensors] : rewritten)
    if (tensors->has_value() && !base.has_component(name))
      throw Error("model_index.json has no component '" + name + "' to save weights for",
                  (base.root() / "model_index.json").string());

  copy_regular_file(base.root() / "model_index.json", dir / "model_index.json");
  for (const Component& component : base.components()) {
    const fs::path from = base.component_dir(component.name), to = dir / component.name;
    auto it = rewritten.find(component.name);
    if (it == rewritten.end() || !it->second->has_value()) {
      copy_tree(from, to);
      continue;
    }
    fs::create_directory(to);
    auto updates = weights.config_updates.find(component.name);
    if (updates == weights.config_updates.end()) {
      copy_regular_file(from / "config.json", to / "config.json");
    } else {
      nlohmann::json config = base.component_config(component.name).json();
      for (const auto& [key, value] : updates->second.items()) config[key] = value;
      std::ofstream file(to / "config.json", std::ios::binary);
      file << config.dump(2) << "\n";
      if (!file.flush()) throw Error("cannot write file", to / "config.json");
    }
    write_weights(to / weight_file_name(component.name), **it->second, weights.save_dtype);
  }
}

void save_pipeline(const ModelFolder& base, const fs::path& out, const SavedWeights& weights) {
  if (!at::isFloatingType(weights.save_dtype))
    throw Error("save dtype must be a floating-point type", out);
  // "dir/" names the folder "dir".
  const fs::path target = out.has_filename() ? out : out.parent_path();
  if (target.empty()) throw Error("empty output path");
  if (fs::exists(target) && !fs::is_directory(target))
    throw Error("output path exists and is not a folder", target);
  publish_folder(target, [&](const fs::path& tmp) { write_pipeline_folder(base, tmp, weights); });
}

}  // namespace sdtune::io
