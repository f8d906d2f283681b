// The pickle inside torch.save's archives (data.pkl), interpreted by a machine that builds values
// and never calls anything: the restricted set of Python globals is in known_global(). Torch-free
// (the archive and the storages are io/pickle_checkpoint's), so that it can be fuzzed
// (fuzz/pickle_state_dict_fuzz.cpp).
#include "io/pickle_machine.h"

#include <array>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <optional>

#include "sdtune/error.h"

namespace sdtune::io::pickle {
namespace {

constexpr int kMaxDepth = 256;  // nesting of containers

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
using V = Value*;  // owned by the machine's Arena
struct Value {
  Kind kind = Kind::None;
  int64_t i = 0;
  double f = 0;
  std::string s;         // String, Bytes, a Global's name
  std::vector<V> items;  // List, Tuple
  std::vector<std::pair<V, V>> dict;
  Global global = Global::Inert;
  std::string dtype;  // Global::StorageType: "float32", ...
  std::shared_ptr<StorageRef> storage;
  std::shared_ptr<TensorRef> tensor;
  int depth = 0;
};

// Every value lives until the machine is done. A pickle can make cycles (a dict that holds itself
// through the memo), which reference counting would leak.
class Arena {
 public:
  V make(Kind k) {
    values_.push_back(std::make_unique<Value>());
    values_.back()->kind = k;
    return values_.back().get();
  }

 private:
  std::vector<std::unique_ptr<Value>> values_;
};

// torch's storage types and dtypes by their global names, as element type names.
std::optional<std::string> storage_dtype(const std::string& name) {
  static const std::map<std::string, std::string> kTypes = {{"FloatStorage", "float32"},
                                                            {"HalfStorage", "float16"},
                                                            {"BFloat16Storage", "bfloat16"},
                                                            {"DoubleStorage", "float64"},
                                                            {"LongStorage", "int64"},
                                                            {"IntStorage", "int32"},
                                                            {"ShortStorage", "int16"},
                                                            {"CharStorage", "int8"},
                                                            {"ByteStorage", "uint8"},
                                                            {"BoolStorage", "bool"},
                                                            {"float32", "float32"},
                                                            {"float", "float32"},
                                                            {"float16", "float16"},
                                                            {"half", "float16"},
                                                            {"bfloat16", "bfloat16"},
                                                            {"float64", "float64"},
                                                            {"double", "float64"},
                                                            {"int64", "int64"},
                                                            {"long", "int64"},
                                                            {"int32", "int32"},
                                                            {"int", "int32"},
                                                            {"int16", "int16"},
                                                            {"int8", "int8"},
                                                            {"uint8", "uint8"},
                                                            {"bool", "bool"}};
  const auto it = kTypes.find(name);
  if (it == kTypes.end()) return std::nullopt;
  return it->second;
}

// The restricted set: what tensors and plain data need, and the inert metadata that PyTorch
// Lightning checkpoints carry (its ModelCheckpoint callback, numpy scalars), which becomes an
// opaque value that is never constructed.
std::optional<V> known_global(Arena& arena, const std::string& module, const std::string& name) {
  auto global = [&](Global g) {
    V v = arena.make(Kind::Global);
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
          push(arena_.make(Kind::None));
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
          push(arena_.make(Kind::Dict));
          break;
        case ']':
          push(arena_.make(Kind::List));
          break;
        case ')':
          push(arena_.make(Kind::Tuple));
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
          V dict = arena_.make(Kind::Dict);
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
    V v = arena_.make(Kind::Float);
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
    V v = arena_.make(k);
    v->s = bytes(n);
    return v;
  }
  V boolean(bool b) {
    V v = arena_.make(Kind::Bool);
    v->i = b;
    return v;
  }
  V integer(int64_t i) {
    V v = arena_.make(Kind::Int);
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
  V container(Kind k, std::vector<V> items, size_t at) {
    V v = arena_.make(k);
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

  V global(const std::string& module, const std::string& name) {
    if (auto v = known_global(arena_, module, name)) return *v;
    throw Error("refused: the pickle names the Python global '" + module + "." + name +
                    "', which is not a tensor, storage or plain value (nothing was run; a "
                    "checkpoint that needs it is not read)",
                file_);
  }

  V reduce(const V& callable, const V& args, size_t at) {
    if (callable->kind != Kind::Global || args->kind != Kind::Tuple)
      fail("REDUCE of something other than a known global", at);
    const auto& a = args->items;
    switch (callable->global) {
      case Global::RebuildTensor: {
        if (a.size() < 4 || a[0]->kind != Kind::Storage || a[1]->kind != Kind::Int)
          fail("malformed _rebuild_tensor_v2 arguments", at);
        V t = arena_.make(Kind::Tensor);
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
        return arena_.make(Kind::Dict);  // its items follow as SETITEMS
      // Neither copies (a memoised value reduced again and again must not multiply memory):
      // set(list) is the list, the bytes of _codecs.encode(text) the text.
      case Global::Set:
        return !a.empty() && a[0]->kind == Kind::List ? a[0] : arena_.make(Kind::List);
      case Global::Encode:
        if (a.empty() || a[0]->kind != Kind::String) fail("malformed _codecs.encode", at);
        return a[0];
      case Global::Inert:
        return arena_.make(Kind::Inert);
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
  V persistent(const V& pid, size_t at) {
    const auto& a = pid->items;
    if (pid->kind != Kind::Tuple || a.size() != 5 || a[0]->kind != Kind::String ||
        a[0]->s != "storage" || a[1]->kind != Kind::Global || a[1]->global != Global::StorageType ||
        a[2]->kind != Kind::String || a[4]->kind != Kind::Int || a[4]->i < 0)
      fail("a persistent id that is not a storage", at);
    V s = arena_.make(Kind::Storage);
    s->storage = std::make_shared<StorageRef>(StorageRef{a[2]->s, a[1]->dtype, a[4]->i});
    return s;
  }

  Arena arena_;
  const std::string& d_;
  std::string file_;
  size_t pos_ = 0;
  std::vector<V> stack_;
  std::vector<size_t> marks_;
  std::map<uint64_t, V> memo_;
};

}  // namespace

StateDictRefs read_state_dict(const std::string& data, const std::string& source) {
  PickleMachine machine(data, source);  // owns every value until the refs are taken
  const V root = machine.run();
  if (root->kind != Kind::Dict) throw Error("the checkpoint is not a dict", source);
  V state = root;
  for (const auto& [k, v] : root->dict)
    if (k->kind == Kind::String && k->s == "state_dict" && v->kind == Kind::Dict) state = v;
  StateDictRefs out;
  for (const auto& [k, v] : state->dict) {
    if (k->kind != Kind::String || v->kind != Kind::Tensor) {
      ++out.other_values;
      continue;
    }
    out.tensors.emplace_back(k->s, *v->tensor);
  }
  return out;
}

}  // namespace sdtune::io::pickle
