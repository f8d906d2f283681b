#pragma once
// PyTorch checkpoints (.ckpt, .pt, .pth: what torch.save writes, a zip of data.pkl plus one record
// per storage), read without executing anything. The pickle is interpreted by a restricted
// machine that knows plain values (None, bools, numbers, strings, bytes, lists, tuples, dicts) and
// tensors; any other Python global it names (os.system, builtins.eval, ...) is an Error that names
// it, raised before anything else happens. Nothing is ever called.
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

namespace sdtune::io {

struct PickleCheckpoint {
  // The state dict: the file's "state_dict" entry (PyTorch Lightning, as the CompVis/Stability
  // checkpoints are) or, without one, the top-level dict itself. Tensors only, in file order.
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  int64_t other_values = 0;  // entries of the state dict that are not tensors
};

// Reads `file`. Errors name the file: not a zip (the pre-1.6 torch.save format is not read), a
// truncated or compressed archive, a pickle opcode or global outside the restricted set, a tensor
// that reaches past its storage, a storage record of the wrong size. Memory: only the storages of
// the state dict's tensors are read, each once.
PickleCheckpoint read_pickle_checkpoint(const std::filesystem::path& file);

// True for the names torch.save files usually carry: .ckpt, .pt, .pth, .bin.
bool pickle_checkpoint_name(const std::filesystem::path& file);

}  // namespace sdtune::io
