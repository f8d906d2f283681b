// torch.save's zip archive is read by LibTorch's own reader (caffe2::serialize, miniz); data.pkl
// is interpreted here, by a pickle machine that builds values and never calls anything. LibTorch's
// C++ unpickler is not used: it turns collections.OrderedDict (every state dict) into None.
#include "sdtune/io/pickle_checkpoint.h"

#include <array>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>

#include <caffe2/serialize/inline_container.h>

#include "sdtune/error.h"

namespace sdtune::io {
namespace fs = std::filesystem;
namespace {

// A pickle holds a few hundred bytes per tensor: SD's data.pkl is well under a megabyte.
constexpr size_t kMaxPickleBytes = size_t{256} << 20;
constexpr int kMaxDepth = 256;  // nesting of containers

struct StorageRef {
  std::string key;  // the record "data/<key>"
  at::ScalarType dtype;
  int64_t numel;
};

struct TensorRef {
  std::shared_ptr<StorageRef> storage;
  int64_t offset = 0;
  std::vector<int64_t> size, stride;
};

// What a Python global stands for. Only these are known; any other is refused by name.
enum class Global { RebuildTensor, RebuildParameter, OrderedDict, Set, Encode, StorageType, Inert };

enum class Kind {
  None,
  Bool,
  Int,
  Float,
  String,
  Bytes,
  List,
  Tuple,
  Dict,
  Global,
  Storage,
  Tensor,
  Inert
};

struct Value;
using V = std::shared_ptr<Value>;
struct Value {
  Kind kind = Kind::None;
  int64_t i = 0;
  double f = 0;
  std::string s;         // String, Bytes, a Global's name
  std::vector<V> items;  // List, Tuple
  std::vector<std::pair<V, V>> dict;
  Global global = Global::Inert;
  at::ScalarType dtype = at::kFloat;  // Global::StorageType
  std::shared_ptr<StorageRef> storage;
  std::shared_ptr<TensorRef> tensor;
  int depth = 0;
};

V make(Kind k) {
  auto v = std::make_shared<Value>();
  v->kind = k;
  return v;
}

std::optional<at::ScalarType> storage_dtype(const std::string& name) {
  static const std::map<std::string, at::ScalarType> kTypes = {{"FloatStorage", at::kFloat},
                                                               {"HalfStorage", at::kHalf},
                                                               {"BFloat16Storage", at::kBFloat16},
                                                               {"DoubleStorage", at::kDouble},
                                                               {"LongStorage", at::kLong},
                                                               {"IntStorage", at::kInt},
                                                               {"ShortStorage", at::kShort},
                                                               {"CharStorage", at::kChar},
                                                               {"ByteStorage", at::kByte},
                                                               {"BoolStorage", at::kBool},
                                                               {"float32", at::kFloat},
                                                               {"float", at::kFloat},
                                                               {"float16", at::kHalf},
                                                               {"half", at::kHalf},
                                                               {"bfloat16", at::kBFloat16},
                                                               {"float64", at::kDouble},
                                                               {"double", at::kDouble},
                                                               {"int64", at::kLong},
                                                               {"long", at::kLong},
                                                               {"int32", at::kInt},
                                                               {"int", at::kInt},
                                                               {"int16", at::kShort},
                                                               {"int8", at::kChar},
                                                               {"uint8", at::kByte},
                                                               {"bool", at::kBool}};
  const auto it = kTypes.find(name);
  if (it == kTypes.end()) return std::nullopt;
  return it->second;
}

// The restricted set: what tensors and plain data need, and the inert metadata that PyTorch
// Lightning checkpoints carry (its ModelCheckpoint callback, numpy scalars), which becomes an
// opaque value that is never constructed.
std::optional<V> known_global(const std::string& module, const std::string& name) {
  auto global = [](Global g) {
    V v = make(Kind::Global);
    v->global = g;
    return v;
  };
  const std::string full = module + "." + name;
  if (full == "torch._utils._rebuild_tensor_v2") return global(Global::RebuildTensor);
  if (full == "torch._utils._rebuild_parameter" ||
      full == "torch._utils._rebuild_parameter_with_state")
    return global(Global::RebuildParameter);
  if (full == "collections.OrderedDict") return global(Global::OrderedDict);
  if (full == "builtins.set" || full == "__builtin__.set") return global(Global::Set);
  if (full == "_codecs.encode") return global(Global::Encode);
  if (module == "torch")
    if (const auto dtype = storage_dtype(name)) {
      V v = global(Global::StorageType);
      v->dtype = *dtype;
      return v;
    }
  static const std::array<const char*, 6> kInert = {
      "numpy.core.multiarray.scalar",
      "numpy._core.multiarray.scalar",
      "numpy.dtype",
      "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
      "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
      "torch.torch_version.TorchVersion"};
  for (const char* inert : kInert)
    if (full == inert) return global(Global::Inert);
  return std::nullopt;
}

class PickleMachine {
 public:
  PickleMachine(const std::string& data, const std::string& file) : d_(data), file_(file) {}

  V run() {
    while (true) {
      const size_t at = pos_;
      const uint8_t op = byte();
      switch (op) {
        case 0x80:
          byte();
          break;  // PROTO
        case 0x95:
          bytes(8);
          break;  // FRAME
        case '.':
          return pop(at);  // STOP
        case '(':
          marks_.push_back(stack_.size());
          break;
        case '0':
          pop(at);
          break;  // POP
        case '1':
          pop_mark(at);
          break;  // POP_MARK
        case '2':
          push(top(at));
          break;  // DUP
        case 'N':
          push(make(Kind::None));
          break;
        case 0x88:
          push(boolean(true));
          break;
        case 0x89:
          push(boolean(false));
          break;
        case 'J':
          push(integer(static_cast<int32_t>(le(4))));
          break;
        case 'K':
          push(integer(static_cast<uint8_t>(le(1))));
          break;
        case 'M':
          push(integer(static_cast<uint16_t>(le(2))));
          break;
        case 0x8a:
          push(integer(long1(at)));
          break;
        case 'G':
          push(real());
          break;
        case 'X':
          push(text(Kind::String, le(4)));
          break;
        case 0x8c:
          push(text(Kind::String, le(1)));
          break;
        case 0x8d:
          push(text(Kind::String, le(8)));
          break;
        case 'B':
          push(text(Kind::Bytes, le(4)));
          break;
        case 'C':
          push(text(Kind::Bytes, le(1)));
          break;
        case 'T':
          push(text(Kind::String, le(4)));
          break;  // BINSTRING
        case 'U':
          push(text(Kind::String, le(1)));
          break;  // SHORT_BINSTRING
        case '}':
          push(make(Kind::Dict));
          break;
        case ']':
          push(make(Kind::List));
          break;
        case ')':
          push(make(Kind::Tuple));
          break;
        case 't':
          push(container(Kind::Tuple, pop_mark(at), at));
          break;
        case 'l':
          push(container(Kind::List, pop_mark(at), at));
          break;
        case 0x85:
        case 0x86:
        case 0x87: {  // TUPLE1..3
          const size_t n = op - 0x84;
          need(n, at);
          std::vector<V> items(stack_.end() - n, stack_.end());
          stack_.resize(stack_.size() - n);
          push(container(Kind::Tuple, std::move(items), at));
          break;
        }
        case 'd': {
          V dict = make(Kind::Dict);
          set_items(dict, pop_mark(at), at);
          push(dict);
          break;
        }
        case 'a': {
          V item = pop(at);
          append(top(at), {item}, at);
          break;
        }
        case 'e': {
          auto items = pop_mark(at);
          append(top(at), std::move(items), at);
          break;
        }
        case 's': {
          V value = pop(at), key = pop(at);
          set_items(top(at), {key, value}, at);
          break;
        }
        case 'u': {
          auto items = pop_mark(at);
          set_items(top(at), std::move(items), at);
          break;
        }
        case 'q':
          memo_[le(1)] = top(at);
          break;
        case 'r':
          memo_[le(4)] = top(at);
          break;
        case 0x94:
          memo_[static_cast<uint64_t>(memo_.size())] = top(at);
          break;
        case 'h':
          push(memo(le(1), at));
          break;
        case 'j':
          push(memo(le(4), at));
          break;
        case 'c': {
          const std::string module = line(at), name = line(at);
          push(global(module, name));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          V name = pop(at), module = pop(at);
          if (module->kind != Kind::String || name->kind != Kind::String) fail("STACK_GLOBAL", at);
          push(global(module->s, name->s));
          break;
        }
        case 'R': {
          V args = pop(at), callable = pop(at);
          push(reduce(callable, args, at));
          break;
        }
        case 0x81: {  // NEWOBJ
          V args = pop(at), cls = pop(at);
          push(reduce(cls, args, at));
          break;
        }
        case 'b': {  // BUILD: object state, ignored (tensors, dicts and inert objects alike)
          pop(at);
          top(at);
          break;
        }
        case 'Q':
          push(persistent(pop(at), at));
          break;
        default: {
          char hex[8];
          std::snprintf(hex, sizeof hex, "0x%02x", op);
          fail(std::string("unsupported pickle opcode ") + hex, at);
        }
      }
    }
  }

 private:
  [[noreturn]] void fail(const std::string& what, size_t at) const {
    throw Error("data.pkl: " + what + " at byte " + std::to_string(at), file_);
  }
  uint8_t byte() {
    if (pos_ >= d_.size()) fail("the pickle ends early", pos_);
    return static_cast<uint8_t>(d_[pos_++]);
  }
  std::string bytes(uint64_t n) {
    if (n > d_.size() - pos_) fail("the pickle ends early", pos_);
    std::string s = d_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  uint64_t le(int n) {
    const std::string b = bytes(n);
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(b[i]);
    return v;
  }
  int64_t long1(size_t at) {  // LONG1: n little-endian two's-complement bytes
    const uint64_t n = byte();
    if (n > 8) fail("an integer wider than 64 bits", at);
    if (n == 0) return 0;
    uint64_t v = le(static_cast<int>(n));
    if (n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);  // sign-extend
    return static_cast<int64_t>(v);
  }
  V real() {
    const std::string b = bytes(8);  // big-endian IEEE double
    uint64_t u = 0;
    for (char c : b) u = (u << 8) | static_cast<uint8_t>(c);
    V v = make(Kind::Float);
    std::memcpy(&v->f, &u, sizeof u);
    return v;
  }
  std::string line(size_t at) {
    const size_t end = d_.find('\n', pos_);
    if (end == std::string::npos || end - pos_ > 256) fail("a malformed GLOBAL", at);
    std::string s = d_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return s;
  }
  V text(Kind k, uint64_t n) {
    V v = make(k);
    v->s = bytes(n);
    return v;
  }
  static V boolean(bool b) {
    V v = make(Kind::Bool);
    v->i = b;
    return v;
  }
  static V integer(int64_t i) {
    V v = make(Kind::Int);
    v->i = i;
    return v;
  }

  void push(V v) { stack_.push_back(std::move(v)); }
  void need(size_t n, size_t at) const {
    const size_t floor = marks_.empty() ? 0 : marks_.back();
    if (stack_.size() < floor + n) fail("stack underflow", at);
  }
  V pop(size_t at) {
    need(1, at);
    V v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  const V& top(size_t at) const {
    need(1, at);
    return stack_.back();
  }
  std::vector<V> pop_mark(size_t at) {
    if (marks_.empty()) fail("no MARK", at);
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<V> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  V memo(uint64_t key, size_t at) const {
    const auto it = memo_.find(key);
    if (it == memo_.end()) fail("a memo key never stored", at);
    return it->second;
  }
  void deepen(Value& c, const V& child, size_t at) const {
    c.depth = std::max(c.depth, child->depth + 1);
    if (c.depth > kMaxDepth) fail("containers nested too deeply", at);
  }
  V container(Kind k, std::vector<V> items, size_t at) const {
    V v = make(k);
    for (const V& item : items) deepen(*v, item, at);
    v->items = std::move(items);
    return v;
  }
  void append(const V& list, std::vector<V> items, size_t at) const {
    if (list->kind == Kind::Inert) return;
    if (list->kind != Kind::List) fail("APPEND to a non-list", at);
    for (V& item : items) {
      deepen(*list, item, at);
      list->items.push_back(std::move(item));
    }
  }
  void set_items(const V& dict, std::vector<V> kv, size_t at) const {
    if (dict->kind == Kind::Inert) return;
    if (dict->kind != Kind::Dict || kv.size() % 2) fail("SETITEM on a non-dict", at);
    for (size_t i = 0; i < kv.size(); i += 2) {
      deepen(*dict, kv[i + 1], at);
      dict->dict.emplace_back(std::move(kv[i]), std::move(kv[i + 1]));
    }
  }

  V global(const std::string& module, const std::string& name) const {
    if (auto v = known_global(module, name)) return *v;
    throw Error("refused: the pickle names the Python global '" + module + "." + name +
                    "', which is not a tensor, storage or plain value (nothing was run; a "
                    "checkpoint that needs it is not read)",
                file_);
  }

  V reduce(const V& callable, const V& args, size_t at) const {
    if (callable->kind != Kind::Global || args->kind != Kind::Tuple)
      fail("REDUCE of something other than a known global", at);
    const auto& a = args->items;
    switch (callable->global) {
      case Global::RebuildTensor: {
        if (a.size() < 4 || a[0]->kind != Kind::Storage || a[1]->kind != Kind::Int)
          fail("malformed _rebuild_tensor_v2 arguments", at);
        V t = make(Kind::Tensor);
        t->tensor = std::make_shared<TensorRef>();
        t->tensor->storage = a[0]->storage;
        t->tensor->offset = a[1]->i;
        t->tensor->size = ints(a[2], at);
        t->tensor->stride = ints(a[3], at);
        if (t->tensor->size.size() != t->tensor->stride.size())
          fail("a tensor's size and stride differ in length", at);
        return t;
      }
      case Global::RebuildParameter:
        if (a.empty() || a[0]->kind != Kind::Tensor) fail("malformed _rebuild_parameter", at);
        return a[0];
      case Global::OrderedDict:
        return make(Kind::Dict);  // its items follow as SETITEMS
      case Global::Set: {
        V list = make(Kind::List);
        if (!a.empty() && a[0]->kind == Kind::List) list->items = a[0]->items;
        list->depth = a.empty() ? 0 : a[0]->depth;
        return list;
      }
      case Global::Encode: {
        if (a.empty() || a[0]->kind != Kind::String) fail("malformed _codecs.encode", at);
        V b = make(Kind::Bytes);
        b->s = a[0]->s;
        return b;
      }
      case Global::Inert:
        return make(Kind::Inert);
      case Global::StorageType:
        break;
    }
    fail("a storage type called", at);
  }

  std::vector<int64_t> ints(const V& tuple, size_t at) const {
    if (tuple->kind != Kind::Tuple && tuple->kind != Kind::List)
      fail("expected a tuple of ints", at);
    std::vector<int64_t> out;
    for (const V& v : tuple->items) {
      if (v->kind != Kind::Int) fail("expected a tuple of ints", at);
      out.push_back(v->i);
    }
    return out;
  }

  // torch.save's persistent id: ("storage", storage type, key, location, numel).
  V persistent(const V& pid, size_t at) const {
    const auto& a = pid->items;
    if (pid->kind != Kind::Tuple || a.size() != 5 || a[0]->kind != Kind::String ||
        a[0]->s != "storage" || a[1]->kind != Kind::Global || a[1]->global != Global::StorageType ||
        a[2]->kind != Kind::String || a[4]->kind != Kind::Int || a[4]->i < 0)
      fail("a persistent id that is not a storage", at);
    V s = make(Kind::Storage);
    s->storage = std::make_shared<StorageRef>(StorageRef{a[2]->s, a[1]->dtype, a[4]->i});
    return s;
  }

  const std::string& d_;
  std::string file_;
  size_t pos_ = 0;
  std::vector<V> stack_;
  std::vector<size_t> marks_;
  std::map<uint64_t, V> memo_;
};

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
      if (bytes != static_cast<size_t>(s.numel) * at::elementSize(s.dtype))
        throw Error("storage record " + record + " holds " + std::to_string(bytes) +
                        " bytes, not the " + std::to_string(s.numel) + " elements it declares",
                    file_, key);
      flat = at::empty({s.numel}, at::TensorOptions().dtype(s.dtype));
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

    const V root = PickleMachine(pickle, name).run();
    if (root->kind != Kind::Dict) throw Error("the checkpoint is not a dict", name);
    V state = root;
    for (const auto& [k, v] : root->dict)
      if (k->kind == Kind::String && k->s == "state_dict" && v->kind == Kind::Dict) state = v;

    PickleCheckpoint out;
    Storages storages(reader, name);
    for (const auto& [k, v] : state->dict) {
      if (k->kind != Kind::String || v->kind != Kind::Tensor) {
        ++out.other_values;
        continue;
      }
      out.tensors.emplace_back(k->s, storages.tensor(*v->tensor, k->s));
    }
    return out;
  } catch (const c10::Error& e) {
    throw Error("not a readable PyTorch checkpoint: " + c10_message(e), name);
  }
}

}  // namespace sdtune::io
