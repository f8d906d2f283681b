#include "sdtune/io/pipeline_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <system_error>

#include "sdtune/error.h"
#include "sdtune/io/remove_tree.h"
#include "sdtune/io/tensor.h"

namespace sdtune::io {
namespace fs = std::filesystem;
namespace {

// The weight file each rewritten component gets (diffusers' and transformers' default names).
const char* weight_file_name(const std::string& component) {
  return component == "text_encoder" ? "model.safetensors" : "diffusion_pytorch_model.safetensors";
}

void sync_tree(const fs::path& root) {
  for (const auto& entry : fs::recursive_directory_iterator(root))
    if (entry.is_regular_file() || entry.is_directory()) sync_path(entry.path());
  sync_path(root);
}

// Copies a file's bytes. Symbolic links are followed: a Hugging Face cache snapshot is made of
// links into its blob store, and the saved folder must stand on its own.
void copy_regular_file(const fs::path& from, const fs::path& to) {
  if (!fs::is_regular_file(from)) throw Error("file not found", from);
  fs::copy_file(from, to, fs::copy_options::overwrite_existing);
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

// Fills `dir` (an empty folder) with the complete pipeline.
void write_folder(const ModelFolder& base, const fs::path& dir, const SavedWeights& weights) {
  const std::map<std::string, const std::optional<NamedTensors>*> rewritten{
      {"unet", &weights.unet}, {"text_encoder", &weights.text_encoder}, {"vae", &weights.vae}};
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
  sync_tree(dir);
}

// `path` with a suffix appended to its last component ("out" -> "out.tmp-123").
fs::path sibling(const fs::path& path, const std::string& suffix) {
  return path.parent_path() / (path.filename().string() + suffix);
}

}  // namespace

// The renames that publish a folder must not reach the disk before the data they publish, or a
// power loss could leave a complete-looking folder of holes.
void sync_path(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(std::string("cannot open for fsync: ") + std::strerror(errno), path);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw Error(std::string("fsync failed: ") + std::strerror(err), path);
}

void save_pipeline(const ModelFolder& base, const fs::path& out, const SavedWeights& weights) {
  if (!at::isFloatingType(weights.save_dtype))
    throw Error("save dtype must be a floating-point type", out);
  // "dir/" names the folder "dir".
  const fs::path target = out.has_filename() ? out : out.parent_path();
  if (target.empty()) throw Error("empty output path");
  if (fs::exists(target) && !fs::is_directory(target))
    throw Error("output path exists and is not a folder", target);
  const std::string pid = std::to_string(::getpid());
  const fs::path tmp = sibling(target, ".tmp-" + pid), old = sibling(target, ".old-" + pid);

  try {
    if (!target.parent_path().empty()) fs::create_directories(target.parent_path());
    io::remove_tree(tmp);  // left over by an earlier process with our pid
    fs::create_directory(tmp);
    write_folder(base, tmp, weights);
  } catch (...) {
    std::error_code ignored;
    io::remove_tree(tmp, ignored);
    try {
      throw;
    } catch (const Error&) {
      throw;
    } catch (const fs::filesystem_error& e) {
      throw Error(e.code().message(), e.path1().string());
    } catch (const std::exception& e) {
      throw Error(e.what(), tmp);
    }
  }

  // The swap: between the two renames neither `target` nor a half-written folder exists under
  // that name; `old` (complete) remains until the new folder is in place.
  const bool replace = fs::exists(target);
  std::error_code ec;
  if (replace) {
    io::remove_tree(old, ec);
    fs::rename(target, old, ec);
    if (ec) {
      io::remove_tree(tmp, ec);
      throw Error("cannot move the existing folder aside: " + ec.message(), target);
    }
  }
  fs::rename(tmp, target, ec);
  if (ec) {
    const std::string message = ec.message();
    if (replace) fs::rename(old, target, ec);  // put the old folder back
    io::remove_tree(tmp, ec);
    throw Error("cannot move the new folder into place: " + message, target);
  }
  if (!target.parent_path().empty()) sync_path(target.parent_path());
  if (replace) {
    io::remove_tree(old, ec);
    if (ec) throw Error("saved, but cannot remove the previous folder: " + ec.message(), old);
  }
}

}  // namespace sdtune::io
