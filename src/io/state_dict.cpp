#include "sdtune/io/state_dict.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <set>
#include <sstream>

#include <torch/nn/module.h>

#include "sdtune/error.h"
#include "sdtune/io/safetensors.h"
#include "sdtune/io/tensor.h"

namespace sdtune::io {
namespace {

// "a, b, c and 12 more": keeps a one-line error readable for a wholly wrong checkpoint.
std::string name_list(const std::vector<std::string>& names, size_t shown = 8) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < shown; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > shown) out += " and " + std::to_string(names.size() - shown) + " more";
  return out;
}

}  // namespace

std::string shape_string(at::IntArrayRef shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? "," : "") << shape[i];
  s << "]";
  return s.str();
}

void KeyMismatch::add_mismatch(const std::string& key, at::IntArrayRef expected,
                               at::IntArrayRef got) {
  mismatched.push_back(key + " (expected " + shape_string(expected) + ", got " + shape_string(got) +
                       ")");
}

void KeyMismatch::throw_if_any(const std::string& what, const std::string& source) const {
  if (missing.empty() && mismatched.empty() && unexpected.empty()) return;
  std::string msg = what + ":";
  auto part = [&](const char* label, const std::vector<std::string>& names) {
    if (!names.empty())
      msg += std::string(" ") + label + " (" + std::to_string(names.size()) +
             "): " + name_list(names) + ";";
  };
  part("missing keys", missing);
  part("shape mismatches", mismatched);
  part("unexpected keys", unexpected);
  msg.pop_back();
  throw Error(msg, source);
}

StateDict read_state_dict(const std::vector<std::filesystem::path>& files) {
  StateDict merged;
  std::map<std::string, std::string> origin;
  for (const auto& file : files) {
    for (auto& [name, tensor] : read_tensors(file)) {
      if (merged.count(name))
        throw Error("tensor appears in two files (also in " + origin[name] + ")", file.string(),
                    name);
      origin[name] = file.string();
      merged.emplace(name, std::move(tensor));
    }
  }
  return merged;
}

void load_into(torch::nn::Module& module, const StateDict& state, const std::string& source,
               const std::vector<std::string>& ignored,
               const std::function<void(const at::Tensor& copied)>& copied) {
  auto targets = state_dict_of(module);
  std::set<std::string> ignore(ignored.begin(), ignored.end());
  std::set<std::string> used;
  KeyMismatch report;
  for (auto& [name, target] : targets) {
    auto it = state.find(name);
    if (it == state.end()) {
      if (!ignore.count(name)) report.missing.push_back(name);
      continue;
    }
    used.insert(name);
    if (!it->second.sizes().equals(target.sizes())) {
      report.add_mismatch(name, target.sizes(), it->second.sizes());
      continue;
    }
  }
  for (const auto& [name, tensor] : state)
    if (!used.count(name) && !ignore.count(name)) report.unexpected.push_back(name);

  report.throw_if_any("weights do not match the model config", source);

  at::NoGradGuard no_grad;
  for (auto& [name, target] : targets) {
    auto it = state.find(name);
    if (it == state.end()) continue;
    target.copy_(it->second);
    if (copied) copied(it->second);
  }
}

void load_files_into(torch::nn::Module& module, const std::vector<std::filesystem::path>& files,
                     const std::string& source, const std::vector<std::string>& ignored,
                     StateDict (*convert_keys)(StateDict)) {
  std::vector<SafetensorsFile> mapped;  // keeps the mappings the views below point into
  StateDict views;
  std::map<std::string, std::string> origin;
  for (const auto& file : files) {
    mapped.push_back(SafetensorsFile::open(file));
    for (const auto& view : mapped.back().tensors()) {
      if (origin.count(view.name))
        throw Error("tensor appears in two files (also in " + origin[view.name] + ")",
                    file.string(), view.name);
      origin[view.name] = file.string();
      try {
        // A view of the mapped bytes: read (and converted) only by the copy into the parameter.
        views.emplace(view.name, at::from_blob(const_cast<std::byte*>(view.data), view.shape,
                                               at::TensorOptions(to_scalar_type(view.dtype))));
      } catch (const Error& e) {
        throw e.with_key(view.name).with_file(file.string());
      }
    }
  }
  if (convert_keys) views = convert_keys(std::move(views));
  load_into(module, views, source, ignored, [](const at::Tensor& copied) {
    release_mapped_pages(copied.data_ptr(), copied.nbytes());
  });
}

std::vector<std::pair<std::string, at::Tensor>> state_dict_of(const torch::nn::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : module.named_parameters(/*recurse=*/true))
    out.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true))
    out.emplace_back(item.key(), item.value());
  return out;
}

}  // namespace sdtune::io
