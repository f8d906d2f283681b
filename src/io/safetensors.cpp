#include "sdtune/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "sdtune/error.h"
#include "sdtune/io/atomic_write.h"
#include "sdtune/io/json_config.h"

namespace sdtune::io {
namespace {

// Same limit as the reference implementation (huggingface/safetensors, tensor.rs).
constexpr uint64_t kMaxHeaderSize = 100'000'000;
constexpr std::size_t kLenBytes = 8;

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  std::size_t bits;
};

// Indexed by the enum value; the order must match the DType declaration (checked below).
// Bit sizes follow Dtype::bitsize() of the reference: F4 = 4, F6_* = 6, C64 = 64 (complex of two
// F32), every F8 variant = 8.
constexpr std::array<DTypeInfo, 20> kDTypes = {{
    {DType::BOOL, "BOOL", 8},       {DType::U8, "U8", 8},           {DType::I8, "I8", 8},
    {DType::I16, "I16", 16},        {DType::U16, "U16", 16},        {DType::I32, "I32", 32},
    {DType::U32, "U32", 32},        {DType::I64, "I64", 64},        {DType::U64, "U64", 64},
    {DType::F16, "F16", 16},        {DType::BF16, "BF16", 16},      {DType::F32, "F32", 32},
    {DType::F64, "F64", 64},        {DType::C64, "C64", 64},        {DType::F8_E4M3, "F8_E4M3", 8},
    {DType::F8_E5M2, "F8_E5M2", 8}, {DType::F8_E8M0, "F8_E8M0", 8}, {DType::F4, "F4", 4},
    {DType::F6_E2M3, "F6_E2M3", 6}, {DType::F6_E3M2, "F6_E3M2", 6},
}};

constexpr bool dtype_table_in_order() {
  for (std::size_t i = 0; i < kDTypes.size(); ++i)
    if (static_cast<std::size_t>(kDTypes[i].dtype) != i) return false;
  return true;
}
static_assert(dtype_table_in_order(), "kDTypes must follow the order of enum DType");

const DTypeInfo& dtype_info(DType dtype) {
  auto index = static_cast<std::size_t>(dtype);
  if (index >= kDTypes.size()) throw Error("invalid DType value " + std::to_string(index));
  return kDTypes[index];
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

// numel × bits, with every step checked: a hostile header must not wrap the byte length around
// into something that passes the offset checks. Throws Error (without file/key) on failure.
std::size_t tensor_nbits(DType dtype, const std::vector<int64_t>& shape) {
  std::size_t bits = dtype_info(dtype).bits;
  std::size_t numel = 1;
  for (int64_t dim : shape) {
    if (dim < 0) throw Error("negative dimension in shape " + shape_string(shape));
    if (__builtin_mul_overflow(numel, static_cast<std::size_t>(dim), &numel))
      throw Error("element count of shape " + shape_string(shape) + " overflows");
  }
  std::size_t nbits;
  if (__builtin_mul_overflow(numel, bits, &nbits))
    throw Error("byte length of shape " + shape_string(shape) + " x " +
                std::string(dtype_name(dtype)) + " overflows");
  return nbits;
}

// The reference rejects sub-byte tensors whose bits do not fill whole bytes (MisalignedSlice):
// the format has no padding, so such a tensor could not be followed by another one.
void check_whole_bytes(DType dtype, const std::vector<int64_t>& shape, std::size_t nbits) {
  if (nbits % 8 != 0)
    throw Error("shape " + shape_string(shape) + " x " + std::string(dtype_name(dtype)) + " is " +
                std::to_string(nbits) + " bits, not a whole number of bytes");
}

// nlohmann's what() starts with "[json.exception.parse_error.101] "; the user does not need it.
std::string json_error_text(const nlohmann::json::exception& e) {
  std::string text = e.what();
  if (text.rfind("[json.exception.", 0) == 0) {
    auto end = text.find("] ");
    if (end != std::string::npos) text.erase(0, end + 2);
  }
  return text;
}

std::string errno_text(int err) {
  return std::error_code(err, std::generic_category()).message();
}

uint64_t read_u64_le(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint64_t>(p[i]);
  return v;
}

// A header entry as parsed, before the offsets are checked against each other.
struct Entry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

Entry parse_entry(const std::string& name, const nlohmann::json& value, const std::string& file) {
  auto fail = [&](const std::string& message) -> Error { return Error(message, file, name); };
  if (!value.is_object()) throw fail("tensor entry is not a JSON object: " + value.dump());
  Entry entry;
  entry.name = name;

  auto dtype_it = value.find("dtype");
  if (dtype_it == value.end()) throw fail("missing \"dtype\"");
  if (!dtype_it->is_string()) throw fail("\"dtype\" is not a string: " + dtype_it->dump());
  const auto& dtype_str = dtype_it->get_ref<const std::string&>();
  auto dtype = parse_dtype(dtype_str);
  if (!dtype) throw fail("unknown dtype \"" + dtype_str + "\"");
  entry.dtype = *dtype;

  auto shape_it = value.find("shape");
  if (shape_it == value.end()) throw fail("missing \"shape\"");
  if (!shape_it->is_array()) throw fail("\"shape\" is not an array: " + shape_it->dump());
  for (const auto& dim : *shape_it) {
    // nlohmann stores non-negative integer literals as unsigned; anything else (negative, float,
    // string, or beyond uint64) is not a valid dimension.
    if (!dim.is_number_unsigned() ||
        dim.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw fail("\"shape\" must hold non-negative integers, got " + shape_it->dump());
    entry.shape.push_back(static_cast<int64_t>(dim.get<uint64_t>()));
  }

  auto offsets_it = value.find("data_offsets");
  if (offsets_it == value.end()) throw fail("missing \"data_offsets\"");
  const auto& offsets = *offsets_it;
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned())
    throw fail("\"data_offsets\" must be [begin, end] non-negative integers, got " +
               offsets.dump());
  entry.begin = offsets[0].get<uint64_t>();
  entry.end = offsets[1].get<uint64_t>();
  if (entry.begin > entry.end) throw fail("data_offsets " + offsets.dump() + ": begin > end");
  return entry;
}

// Closes a FILE left open by an error (the normal path closes it and checks the result).
struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};

}  // namespace

std::size_t dtype_bits(DType dtype) {
  return dtype_info(dtype).bits;
}

std::string_view dtype_name(DType dtype) {
  return dtype_info(dtype).name;
}

std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& info : kDTypes)
    if (info.name == name) return info.dtype;
  return std::nullopt;
}

// ceil(numel × bits / 8) as the header documents; throws sdtune::Error (no file/key) on a
// negative dimension or overflow. Whether a sub-byte tensor fills whole bytes is checked by the
// reader and writer, which reject it as the reference implementation does.
std::size_t tensor_nbytes(DType dtype, const std::vector<int64_t>& shape) {
  std::size_t nbits = tensor_nbits(dtype, shape);
  return nbits / 8 + (nbits % 8 != 0 ? 1 : 0);
}

int64_t TensorView::numel() const {
  // Views from open() always fit; a hand-built view with absurd dims must not hit signed overflow.
  int64_t n = 1;
  for (int64_t dim : shape)
    if (__builtin_mul_overflow(n, dim, &n))
      throw Error("element count of shape " + shape_string(shape) + " overflows", {}, name);
  return n;
}

struct SafetensorsFile::Mapping {
  void* addr = nullptr;
  std::size_t size = 0;
  Mapping(void* a, std::size_t s) : addr(a), size(s) {}
  ~Mapping() {
    if (addr != nullptr) munmap(addr, size);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
};

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  const std::string file = path.string();
  SafetensorsFile result;
  result.path_ = path;

  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot open file: " + errno_text(errno), file);
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw Error("cannot stat file: " + errno_text(err), file);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error("not a regular file", file);
  }
  const auto file_size = static_cast<std::size_t>(st.st_size);
  if (file_size < kLenBytes) {
    ::close(fd);
    throw Error(
        "file is " + std::to_string(file_size) + " bytes, shorter than the 8-byte header length",
        file);
  }
  void* addr = mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int mmap_err = errno;
  ::close(fd);  // the mapping keeps the file contents reachable on its own
  if (addr == MAP_FAILED) throw Error("cannot memory-map file: " + errno_text(mmap_err), file);
  result.mapping_ = std::make_shared<Mapping>(addr, file_size);
  const auto* bytes = static_cast<const std::byte*>(addr);

  const uint64_t header_size = read_u64_le(bytes);
  if (header_size > kMaxHeaderSize)
    throw Error("header size " + std::to_string(header_size) + " exceeds limit of " +
                    std::to_string(kMaxHeaderSize) + " bytes",
                file);
  if (kLenBytes + header_size > file_size)
    throw Error("header extends past end of file: 8 + " + std::to_string(header_size) +
                    " header bytes > file size " + std::to_string(file_size),
                file);

  const char* header_begin = reinterpret_cast<const char*>(bytes + kLenBytes);
  // nlohmann stops at a NUL byte as if the input ended there, so "{}\0junk" would parse; a raw
  // NUL is never valid JSON (not even inside a string), and the reference rejects it.
  if (const void* nul = std::memchr(header_begin, '\0', header_size))
    throw Error("invalid JSON in header: NUL byte at header offset " +
                    std::to_string(static_cast<const char*>(nul) - header_begin),
                file);
  nlohmann::json header;
  try {
    header =
        nlohmann::json::parse(header_begin, header_begin + header_size, json_depth_limit(file));
  } catch (const nlohmann::json::exception& e) {
    throw Error("invalid JSON in header: " + json_error_text(e), file);
  }
  if (!header.is_object())
    throw Error(std::string("header is not a JSON object but ") + header.type_name(), file);

  std::vector<Entry> entries;
  entries.reserve(header.size());
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object())
        throw Error("__metadata__ is not a JSON object: " + value.dump(), file);
      for (const auto& [meta_key, meta_value] : value.items()) {
        if (!meta_value.is_string())
          throw Error("__metadata__ value is not a string: " + meta_value.dump(), file, meta_key);
        result.metadata_[meta_key] = meta_value.get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(key, value, file));
  }

  // The reference sorts by (begin, end) and then requires the ranges to tile the data buffer
  // from 0 with no gap or overlap.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::pair(a.begin, a.end) < std::pair(b.begin, b.end);
  });
  const std::size_t data_size = file_size - kLenBytes - header_size;
  const std::byte* data = bytes + kLenBytes + header_size;
  uint64_t expected_begin = 0;
  std::string previous;
  for (auto& entry : entries) {
    const std::string range =
        "[" + std::to_string(entry.begin) + "," + std::to_string(entry.end) + "]";
    if (entry.begin < expected_begin)
      throw Error("data_offsets " + range + " overlap the previous tensor '" + previous +
                      "' which ends at " + std::to_string(expected_begin),
                  file, entry.name);
    if (entry.begin > expected_begin)
      throw Error(
          "data_offsets " + range + " leave a gap: expected begin " +
              std::to_string(expected_begin) +
              (previous.empty() ? std::string(" (start of data)") : " (end of '" + previous + "')"),
          file, entry.name);
    std::size_t nbits;
    try {
      nbits = tensor_nbits(entry.dtype, entry.shape);
      check_whole_bytes(entry.dtype, entry.shape, nbits);
    } catch (const Error& e) {
      throw Error(e.message(), file, entry.name);
    }
    const uint64_t length = entry.end - entry.begin;
    if (length != nbits / 8)
      throw Error("tensor byte length " + std::to_string(length) + " != shape " +
                      shape_string(entry.shape) + " x " + std::string(dtype_name(entry.dtype)) +
                      " = " + std::to_string(nbits / 8),
                  file, entry.name);
    if (entry.end > data_size)
      throw Error("data_offsets " + range + " extend past the end of the " +
                      std::to_string(data_size) + "-byte data buffer (file truncated?)",
                  file, entry.name);
    expected_begin = entry.end;
    previous = entry.name;
    result.tensors_.push_back(TensorView{std::move(entry.name), entry.dtype, std::move(entry.shape),
                                         data + entry.begin, static_cast<std::size_t>(length)});
  }
  if (expected_begin != data_size)
    throw Error("data buffer length mismatch: tensors cover " + std::to_string(expected_begin) +
                    " bytes but the data buffer has " + std::to_string(data_size),
                file);
  return result;
}

const TensorView* SafetensorsFile::find(std::string_view name) const {
  for (const auto& tensor : tensors_)
    if (tensor.name == name) return &tensor;
  return nullptr;
}

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string file = path.string();

  std::vector<const TensorWrite*> sorted;
  sorted.reserve(tensors.size());
  for (const auto& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](const TensorWrite* a, const TensorWrite* b) { return a->name < b->name; });

  nlohmann::json header = nlohmann::json::object();
  std::vector<std::size_t> lengths;
  lengths.reserve(sorted.size());
  uint64_t offset = 0;
  for (std::size_t i = 0; i < sorted.size(); ++i) {
    const TensorWrite& t = *sorted[i];
    if (t.name == "__metadata__")
      throw Error("tensor name is reserved for the metadata entry", file, t.name);
    if (i > 0 && sorted[i - 1]->name == t.name) throw Error("duplicate tensor name", file, t.name);
    std::size_t nbits;
    try {
      nbits = tensor_nbits(t.dtype, t.shape);
      check_whole_bytes(t.dtype, t.shape, nbits);
    } catch (const Error& e) {
      throw Error(e.message(), file, t.name);
    }
    const std::size_t length = nbits / 8;
    if (length > 0 && t.data == nullptr)
      throw Error("data is null for a tensor of " + std::to_string(length) + " bytes", file,
                  t.name);
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + length}}};
    offset += length;
    lengths.push_back(length);
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;

  std::string header_text;
  try {
    header_text = header.dump();  // compact; throws on a name or value that is not UTF-8
  } catch (const nlohmann::json::exception& e) {
    throw Error("cannot encode header: " + json_error_text(e), file);
  }
  // Pad with spaces (valid JSON whitespace) so the data buffer starts 8-byte aligned.
  header_text.append((kLenBytes - header_text.size() % kLenBytes) % kLenBytes, ' ');
  if (header_text.size() > kMaxHeaderSize)
    throw Error("header size " + std::to_string(header_text.size()) + " exceeds limit of " +
                    std::to_string(kMaxHeaderSize) + " bytes",
                file);

  std::array<unsigned char, kLenBytes> len_bytes{};
  for (std::size_t i = 0; i < kLenBytes; ++i)
    len_bytes[i] = static_cast<unsigned char>(static_cast<uint64_t>(header_text.size()) >> (8 * i));

  write_file_atomically(path, [&](const std::filesystem::path& temp) {
    // Takes errno as an argument so that building the message cannot clobber it first.
    auto io_fail = [&](const char* what, int err) -> Error {
      return Error(std::string(what) + " " + temp.string() + ": " + errno_text(err), file);
    };
    std::unique_ptr<FILE, FileCloser> owned(std::fopen(temp.c_str(), "wb"));
    FILE* out = owned.get();
    if (out == nullptr) throw io_fail("cannot create temporary file", errno);
    if (std::fwrite(len_bytes.data(), 1, len_bytes.size(), out) != len_bytes.size() ||
        std::fwrite(header_text.data(), 1, header_text.size(), out) != header_text.size())
      throw io_fail("cannot write header to", errno);
    for (std::size_t i = 0; i < sorted.size(); ++i) {
      if (lengths[i] == 0) continue;
      if (std::fwrite(sorted[i]->data, 1, lengths[i], out) != lengths[i]) {
        int err = errno;
        throw Error("cannot write tensor data to " + temp.string() + ": " + errno_text(err), file,
                    sorted[i]->name);
      }
    }
    if (std::fflush(out) != 0) throw io_fail("cannot flush", errno);
    if (std::fclose(owned.release()) != 0) throw io_fail("cannot close", errno);
  });
}

void release_mapped_pages(const void* data, std::size_t size) {
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto start = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (start + page - 1) / page * page, end = (start + size) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace sdtune::io
