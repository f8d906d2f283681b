// torch.save's zip archive is read by LibTorch's own reader (caffe2::serialize, miniz); data.pkl
// is interpreted by io/pickle_machine, which builds values and never calls anything. LibTorch's
// C++ unpickler is not used: it turns collections.OrderedDict (every state dict) into None.
#include "sdtune/io/pickle_checkpoint.h"

#include <cstring>
#include <fstream>
#include <map>

#include <caffe2/serialize/inline_container.h>

#include "io/pickle_machine.h"
#include "sdtune/error.h"

namespace sdtune::io {
namespace fs = std::filesystem;
namespace {

using pickle::StorageRef;
using pickle::TensorRef;

// A pickle holds a few hundred bytes per tensor: SD's data.pkl is well under a megabyte.
constexpr size_t kMaxPickleBytes = size_t{256} << 20;

at::ScalarType scalar_type(const std::string& dtype) {
  static const std::map<std::string, at::ScalarType> kTypes = {
      {"float32", at::kFloat},  {"float16", at::kHalf}, {"bfloat16", at::kBFloat16},
      {"float64", at::kDouble}, {"int64", at::kLong},   {"int32", at::kInt},
      {"int16", at::kShort},    {"int8", at::kChar},    {"uint8", at::kByte},
      {"bool", at::kBool}};
  return kTypes.at(dtype);
}

// One storage record as a flat tensor, read once however many tensors view it.
class Storages {
 public:
  Storages(caffe2::serialize::PyTorchStreamReader& reader, std::string file)
      : reader_(reader), file_(std::move(file)) {}

  at::Tensor tensor(const TensorRef& t, const std::string& key) {
    const StorageRef& s = *t.storage;
    at::Tensor& flat = read_[s.key];
    if (!flat.defined()) {
      const std::string record = "data/" + s.key;
      if (!reader_.hasRecord(record)) throw Error("no storage record " + record, file_, key);
      const size_t bytes = reader_.getRecordSize(record);
      const at::ScalarType dtype = scalar_type(s.dtype);
      // numel · element size must not overflow into a match: numel cannot exceed the bytes.
      if (static_cast<uint64_t>(s.numel) > bytes ||
          bytes != static_cast<size_t>(s.numel) * at::elementSize(dtype))
        throw Error("storage record " + record + " holds " + std::to_string(bytes) +
                        " bytes, not the " + std::to_string(s.numel) + " elements it declares",
                    file_, key);
      flat = at::empty({s.numel}, at::TensorOptions().dtype(dtype));
      reader_.getRecord(record, flat.data_ptr(), bytes);
    }
    // The view must stay inside its storage.
    int64_t last = t.offset;
    bool empty = false;
    for (size_t i = 0; i < t.size.size(); ++i) {
      if (t.size[i] < 0 || t.stride[i] < 0) throw Error("negative size or stride", file_, key);
      if (t.size[i] == 0) {
        empty = true;
        continue;
      }
      int64_t span = 0;
      if (__builtin_mul_overflow(t.size[i] - 1, t.stride[i], &span) ||
          __builtin_add_overflow(last, span, &last))
        throw Error("a tensor's size and stride overflow", file_, key);
    }
    if (t.offset < 0 || (!empty && last >= s.numel))
      throw Error("the tensor reaches past its storage (" + std::to_string(s.numel) + " elements)",
                  file_, key);
    return flat.as_strided(t.size, t.stride, t.offset);
  }

 private:
  caffe2::serialize::PyTorchStreamReader& reader_;
  std::string file_;
  std::map<std::string, at::Tensor> read_;
};

std::string c10_message(const c10::Error& e) {
  std::string m = e.what_without_backtrace();
  return m.substr(0, m.find('\n'));
}

}  // namespace

bool pickle_checkpoint_name(const fs::path& file) {
  const std::string ext = file.extension().string();
  return ext == ".ckpt" || ext == ".pt" || ext == ".pth" || ext == ".bin";
}

PickleCheckpoint read_pickle_checkpoint(const fs::path& file) {
  const std::string name = file.string();
  std::error_code ec;
  const uintmax_t file_size = fs::file_size(file, ec);
  if (ec) throw Error("cannot read: " + ec.message(), name);
  {
    std::ifstream in(file, std::ios::binary);
    char magic[4] = {};
    in.read(magic, 4);
    if (std::memcmp(magic, "PK\x03\x04", 4) != 0)
      throw Error(
          "not a zip archive: not a PyTorch checkpoint, or torch.save's legacy (pre-1.6) format, "
          "which is not read",
          name);
  }
  try {
    caffe2::serialize::PyTorchStreamReader reader(name);
    // Records are stored, not compressed, in torch.save's archives: together they cannot exceed
    // the file. This bounds what any record can make us allocate.
    uintmax_t total = 0;
    for (const std::string& record : reader.getAllRecords()) total += reader.getRecordSize(record);
    if (total > file_size)
      throw Error("the archive's records add up to more than the file (compressed entries?)", name);
    if (reader.hasRecord("byteorder")) {
      const auto [data, size] = reader.getRecord("byteorder");
      const std::string order(static_cast<const char*>(data.get()), size);
      if (order != "little") throw Error("byte order '" + order + "' is not read", name);
    }
    if (!reader.hasRecord("data.pkl")) throw Error("no data.pkl in the archive", name);
    if (reader.getRecordSize("data.pkl") > kMaxPickleBytes)
      throw Error("data.pkl is larger than 256 MiB", name);
    const auto [data, size] = reader.getRecord("data.pkl");
    const std::string pickle(static_cast<const char*>(data.get()), size);

    const pickle::StateDictRefs refs = pickle::read_state_dict(pickle, name);
    PickleCheckpoint out;
    out.other_values = refs.other_values;
    Storages storages(reader, name);
    for (const auto& [key, t] : refs.tensors)
      out.tensors.emplace_back(key, storages.tensor(t, key));
    return out;
  } catch (const c10::Error& e) {
    throw Error("not a readable PyTorch checkpoint: " + c10_message(e), name);
  }
}

}  // namespace sdtune::io
