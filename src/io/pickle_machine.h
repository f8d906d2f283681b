#pragma once
// Interprets a torch.save pickle (data.pkl) without running it, down to the tensors of its state
// dict: where each tensor's data lies, not the data (io/pickle_checkpoint reads that).
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace sdtune::io::pickle {

struct StorageRef {
  std::string key;    // its record is "data/<key>"
  std::string dtype;  // "float32", "float16", "bfloat16", "float64", "int64", ..., "bool"
  int64_t numel = 0;
};

// A tensor as torch._utils._rebuild_tensor_v2 describes it: a strided view of a storage.
// Unchecked against the storage: the reader checks the view fits.
struct TensorRef {
  std::shared_ptr<StorageRef> storage;
  int64_t offset = 0;
  std::vector<int64_t> size, stride;
};

struct StateDictRefs {
  std::vector<std::pair<std::string, TensorRef>> tensors;  // in file order
  int64_t other_values = 0;                                // entries that are not tensors
};

// The state dict of the pickle `data`: its "state_dict" entry (PyTorch Lightning) or the top-level
// dict. An Error naming `source` for a global outside the restricted set (named in the message),
// an unknown opcode, a malformed or truncated pickle, containers nested over 256 deep.
StateDictRefs read_state_dict(const std::string& data, const std::string& source);

}  // namespace sdtune::io::pickle
