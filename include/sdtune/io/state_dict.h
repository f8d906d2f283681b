#pragma once
// Loading and saving module weights by name. Module parameter names are the diffusers /
// transformers state-dict keys, so loading is a straight name-to-name map.
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

namespace torch::nn {
class Module;
}

namespace sdtune::io {

using StateDict = std::map<std::string, at::Tensor>;

// Reads and merges the tensors of all files (a sharded checkpoint); a key present in two files is
// an error naming both.
StateDict read_state_dict(const std::vector<std::filesystem::path>& files);

// Copies each tensor of `state` into the module's parameter or buffer of the same name, converted
// to that parameter's dtype and device. Throws one Error (file = `source`) that names every
// missing key, unexpected key and shape mismatch (expected against actual). Keys listed in
// `ignored` (exact names) may be present or absent in `state` without error.
// `copied`, when given, is called with each tensor of `state` once it has been copied.
void load_into(torch::nn::Module& module, const StateDict& state, const std::string& source,
               const std::vector<std::string>& ignored = {},
               const std::function<void(const at::Tensor& copied)>& copied = {});

// load_into from safetensors files without a second copy of the weights: each tensor is copied
// straight from the mapped file into its parameter, and the file's pages under it are dropped
// from memory as soon as it is (they would be read again from the file if touched). Loading then
// needs the module's own memory plus about one tensor, where reading a state dict first held the
// weights three times (the module, the state dict, the mapped pages). `convert_keys` renames keys
// (e.g. older checkpoint layouts) before matching. Errors as read_state_dict and load_into.
void load_files_into(torch::nn::Module& module, const std::vector<std::filesystem::path>& files,
                     const std::string& source, const std::vector<std::string>& ignored = {},
                     StateDict (*convert_keys)(StateDict) = nullptr);

// "[2,3]": a shape as the key-mismatch errors print it.
std::string shape_string(at::IntArrayRef shape);

// The keys of a saved state that do not fit what loads it. throw_if_any() raises one one-line
// Error: "<what>: missing keys (n): a, b; shape mismatches (n): k (expected [..], got [..]);
// unexpected keys (n): ..." (long lists end in "and N more"), with file = `source`.
struct KeyMismatch {
  std::vector<std::string> missing, mismatched, unexpected;
  void add_mismatch(const std::string& key, at::IntArrayRef expected, at::IntArrayRef got);
  void throw_if_any(const std::string& what, const std::string& source = "") const;
};

// The module's parameters and buffers under their state-dict names, in registration order.
std::vector<std::pair<std::string, at::Tensor>> state_dict_of(const torch::nn::Module& module);

}  // namespace sdtune::io
