#include "sdtune/io/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sdtune/error.h"

namespace sdtune::io {
namespace {

namespace fs = std::filesystem;

// Each test gets its own empty folder, removed afterwards.
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("sdtune_safetensors_test_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path path(const std::string& name) const { return dir_ / name; }

  // Writes u64-LE header length (the real one unless `n` overrides it), header, data.
  fs::path write_raw(const std::string& header, const std::string& data = {},
                     std::optional<uint64_t> n = std::nullopt) const {
    fs::path p = path("raw.safetensors");
    uint64_t len = n.value_or(header.size());
    std::string bytes;
    for (int i = 0; i < 8; ++i) bytes += static_cast<char>((len >> (8 * i)) & 0xff);
    bytes += header;
    bytes += data;
    write_bytes(p, bytes);
    return p;
  }

  static void write_bytes(const fs::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }

  static std::string read_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }

  std::vector<std::string> folder_entries() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_))
      names.push_back(entry.path().filename().string());
    return names;
  }

  fs::path dir_;
};

// Runs `fn`, which must throw sdtune::Error; returns that error (or a marker error on failure).
Error catch_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-sdtune exception: " << e.what();
    return Error("<wrong exception type>");
  }
  ADD_FAILURE() << "no exception thrown";
  return Error("<no exception>");
}

Error open_error(const fs::path& p) {
  return catch_error([&] { SafetensorsFile::open(p); });
}

::testing::AssertionResult Mentions(const Error& e, const std::string& text) {
  if (std::string(e.what()).find(text) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "\"" << e.what() << "\" does not mention \"" << text << "\"";
}

// A header entry for hand-made files.
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  uint64_t begin, uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
}

// ---- dtype helpers ------------------------------------------------------------------------------

TEST(SafetensorsDType, NamesAndBitsFollowTheFormat) {
  const std::vector<std::pair<std::string, std::size_t>> expected = {
      {"BOOL", 8},    {"U8", 8},      {"I8", 8},   {"I16", 16},    {"U16", 16},
      {"I32", 32},    {"U32", 32},    {"I64", 64}, {"U64", 64},    {"F16", 16},
      {"BF16", 16},   {"F32", 32},    {"F64", 64}, {"C64", 64},    {"F8_E4M3", 8},
      {"F8_E5M2", 8}, {"F8_E8M0", 8}, {"F4", 4},   {"F6_E2M3", 6}, {"F6_E3M2", 6},
  };
  for (const auto& [name, bits] : expected) {
    auto dtype = parse_dtype(name);
    ASSERT_TRUE(dtype.has_value()) << name;
    EXPECT_EQ(dtype_name(*dtype), name);
    EXPECT_EQ(dtype_bits(*dtype), bits) << name;
  }
  EXPECT_FALSE(parse_dtype("f32").has_value());
  EXPECT_FALSE(parse_dtype("F8_E4M3FNUZ").has_value());
  EXPECT_FALSE(parse_dtype("").has_value());
}

TEST(SafetensorsDType, TensorNbytes) {
  EXPECT_EQ(tensor_nbytes(DType::F32, {2, 3}), 24u);
  EXPECT_EQ(tensor_nbytes(DType::BF16, {}), 2u);  // a scalar has one element
  EXPECT_EQ(tensor_nbytes(DType::F64, {0, 7}), 0u);
  EXPECT_EQ(tensor_nbytes(DType::C64, {3}), 24u);
  EXPECT_EQ(tensor_nbytes(DType::F4, {4}), 2u);
  EXPECT_EQ(tensor_nbytes(DType::F4, {3}), 2u);  // ceil, as documented
  EXPECT_EQ(tensor_nbytes(DType::F6_E3M2, {4}), 3u);
  EXPECT_TRUE(Mentions(catch_error([] { tensor_nbytes(DType::F32, {2, -1}); }), "negative"));
  EXPECT_TRUE(Mentions(catch_error([] {
                         tensor_nbytes(DType::U8, {int64_t{1} << 40, int64_t{1} << 40});
                       }),
                       "overflows"));
  EXPECT_TRUE(
      Mentions(catch_error([] { tensor_nbytes(DType::F64, {int64_t{1} << 61}); }), "overflows"));
}

// ---- round trip ---------------------------------------------------------------------------------

TEST_F(SafetensorsTest, RoundTripSeveralDTypesWithMetadata) {
  std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, 8.0f};
  std::vector<uint16_t> bf16 = {0x3f80, 0xc000, 0x7f80};
  std::vector<int64_t> i64 = {-1, 1LL << 40};
  std::vector<uint8_t> u8 = {1, 2, 3, 4, 5};
  std::vector<uint8_t> flags = {1, 0, 1};
  std::vector<double> f64 = {3.141592653589793};
  std::vector<float> c64 = {1.0f, -1.0f, 2.0f, -2.0f};  // two complex numbers
  std::vector<uint8_t> f4 = {0x12, 0x34};               // four 4-bit values
  std::vector<uint8_t> f6 = {0xab, 0xcd, 0xef};         // four 6-bit values
  std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "ünïcode ✓"}};

  const std::vector<TensorWrite> writes = {
      {"weight", DType::F32, {2, 3}, f32.data()},    {"bias.bf16", DType::BF16, {3}, bf16.data()},
      {"steps", DType::I64, {2}, i64.data()},        {"bytes", DType::U8, {5}, u8.data()},
      {"flags", DType::BOOL, {3}, flags.data()},     {"scalar", DType::F64, {}, f64.data()},
      {"complex", DType::C64, {2}, c64.data()},      {"packed.f4", DType::F4, {2, 2}, f4.data()},
      {"packed.f6", DType::F6_E2M3, {4}, f6.data()}, {"empty", DType::F16, {0, 4}, nullptr},
  };
  const fs::path p = path("model.safetensors");
  write_safetensors(p, writes, metadata);

  SafetensorsFile file = SafetensorsFile::open(p);
  EXPECT_EQ(file.path(), p);
  EXPECT_EQ(file.metadata(), metadata);
  ASSERT_EQ(file.tensors().size(), writes.size());

  // Data is laid out in name order, so offset order is name order.
  for (std::size_t i = 1; i < file.tensors().size(); ++i)
    EXPECT_LT(file.tensors()[i - 1].name, file.tensors()[i].name);

  for (const auto& w : writes) {
    const TensorView* view = file.find(w.name);
    ASSERT_NE(view, nullptr) << w.name;
    EXPECT_EQ(view->name, w.name);
    EXPECT_EQ(view->dtype, w.dtype) << w.name;
    EXPECT_EQ(view->shape, w.shape) << w.name;
    ASSERT_EQ(view->nbytes, tensor_nbytes(w.dtype, w.shape)) << w.name;
    if (view->nbytes > 0) {
      EXPECT_EQ(std::memcmp(view->data, w.data, view->nbytes), 0) << w.name;
    }
  }
  EXPECT_EQ(file.find("weight")->numel(), 6);
  EXPECT_EQ(file.find("scalar")->numel(), 1);
  EXPECT_EQ(file.find("empty")->numel(), 0);
  EXPECT_EQ(file.find("missing"), nullptr);

  // Views point into the mapping, which survives a move of the file object.
  SafetensorsFile moved = std::move(file);
  float first;
  std::memcpy(&first, moved.find("weight")->data, sizeof first);
  EXPECT_EQ(first, 1.5f);
}

TEST_F(SafetensorsTest, HeaderIsPaddedTo8BytesSortedAndCompact) {
  std::vector<uint8_t> data(16, 7);
  for (std::size_t name_len = 1; name_len <= 9; ++name_len) {
    for (bool with_metadata : {false, true}) {
      const fs::path p = path("aligned.safetensors");
      std::map<std::string, std::string> metadata;
      if (with_metadata) metadata["k"] = std::string(name_len, 'v');
      write_safetensors(p,
                        {{std::string(name_len, 'z'), DType::U8, {4}, data.data()},
                         {std::string(name_len, 'a'), DType::U8, {2}, data.data()}},
                        metadata);
      const std::string bytes = read_bytes(p);
      ASSERT_GE(bytes.size(), 8u);
      uint64_t n = 0;
      for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
      EXPECT_EQ((8 + n) % 8, 0u) << "name_len " << name_len;
      EXPECT_EQ(bytes.size(), 8 + n + 6);
      const std::string header = bytes.substr(8, n);
      const std::string trimmed = header.substr(0, header.find_last_not_of(' ') + 1);
      EXPECT_LT(header.size() - trimmed.size(), 8u);  // padding only as much as needed
      EXPECT_EQ(trimmed.find(' '), std::string::npos) << "not compact: " << trimmed;

      const auto json = nlohmann::json::parse(header);
      EXPECT_EQ(json.contains("__metadata__"), with_metadata);
      // Name order decides data order: "aaa" (2 bytes) first, then "zzz".
      EXPECT_EQ(json[std::string(name_len, 'a')]["data_offsets"], nlohmann::json({0, 2}));
      EXPECT_EQ(json[std::string(name_len, 'z')]["data_offsets"], nlohmann::json({2, 6}));
      EXPECT_LT(trimmed.find('"' + std::string(name_len, 'a') + '"'),
                trimmed.find('"' + std::string(name_len, 'z') + '"'));
    }
  }
}

TEST_F(SafetensorsTest, ZeroTensors) {
  const fs::path p = path("empty.safetensors");
  write_safetensors(p, {});
  SafetensorsFile file = SafetensorsFile::open(p);
  EXPECT_TRUE(file.tensors().empty());
  EXPECT_TRUE(file.metadata().empty());

  SafetensorsFile raw = SafetensorsFile::open(write_raw("{}"));
  EXPECT_TRUE(raw.tensors().empty());
  SafetensorsFile meta_only = SafetensorsFile::open(write_raw("{\"__metadata__\":{\"a\":\"b\"}}"));
  EXPECT_EQ(meta_only.metadata().at("a"), "b");
}

TEST_F(SafetensorsTest, ReadsOffsetsInAnyHeaderOrder) {
  // Keys out of offset order and extra whitespace: both allowed by the format.
  const std::string header =
      "{ " + entry("b", "U8", "[2]", 2, 4) + " , " + entry("a", "I16", "[1]", 0, 2) + " }   ";
  SafetensorsFile file = SafetensorsFile::open(write_raw(header, "\x01\x02\x03\x04"));
  ASSERT_EQ(file.tensors().size(), 2u);
  EXPECT_EQ(file.tensors()[0].name, "a");
  EXPECT_EQ(file.tensors()[1].name, "b");
  EXPECT_EQ(static_cast<char>(file.find("b")->data[0]), '\x03');
}

// ---- bad files ----------------------------------------------------------------------------------

TEST_F(SafetensorsTest, MissingFile) {
  const fs::path p = path("nope.safetensors");
  Error e = open_error(p);
  EXPECT_TRUE(Mentions(e, "cannot open"));
  EXPECT_EQ(e.file(), p.string());
}

TEST_F(SafetensorsTest, FileShorterThan8Bytes) {
  const fs::path p = path("short.safetensors");
  write_bytes(p, "");
  EXPECT_TRUE(Mentions(open_error(p), "shorter than"));
  write_bytes(p, std::string("\x02\x00\x00\x00", 4));
  Error e = open_error(p);
  EXPECT_TRUE(Mentions(e, "4 bytes, shorter than"));
  EXPECT_EQ(e.file(), p.string());
}

TEST_F(SafetensorsTest, HugeHeaderSize) {
  Error e = open_error(write_raw("{}", "", 100'000'001));
  EXPECT_TRUE(Mentions(e, "header size 100000001 exceeds limit"));
  EXPECT_TRUE(Mentions(open_error(write_raw("{}", "", ~uint64_t{0})), "exceeds limit"));
}

TEST_F(SafetensorsTest, HeaderPastEndOfFile) {
  EXPECT_TRUE(Mentions(open_error(write_raw("{}", "", 100)), "header extends past end of file"));
}

TEST_F(SafetensorsTest, InvalidJson) {
  EXPECT_TRUE(Mentions(open_error(write_raw("{\"a\": ")), "invalid JSON"));
  EXPECT_TRUE(Mentions(open_error(write_raw(std::string("{}\0\0", 4))), "invalid JSON"));
  EXPECT_TRUE(Mentions(open_error(write_raw("{\"\xff\":1}")), "invalid JSON"));  // bad UTF-8
}

TEST_F(SafetensorsTest, HeaderNotAnObject) {
  EXPECT_TRUE(Mentions(open_error(write_raw("[1,2]")), "header is not a JSON object"));
  EXPECT_TRUE(Mentions(open_error(write_raw("\"x\"")), "header is not a JSON object"));
}

TEST_F(SafetensorsTest, BadMetadata) {
  Error e = open_error(write_raw("{\"__metadata__\":{\"ok\":\"yes\",\"epoch\":3}}"));
  EXPECT_TRUE(Mentions(e, "__metadata__ value is not a string"));
  EXPECT_EQ(e.key(), "epoch");
  EXPECT_TRUE(Mentions(open_error(write_raw("{\"__metadata__\":[\"a\"]}")),
                       "__metadata__ is not a JSON object"));
}

TEST_F(SafetensorsTest, UnknownDType) {
  Error e = open_error(write_raw("{" + entry("w", "Q4_K", "[2]", 0, 2) + "}", "ab"));
  EXPECT_TRUE(Mentions(e, "unknown dtype \"Q4_K\""));
  EXPECT_EQ(e.key(), "w");
}

TEST_F(SafetensorsTest, MalformedEntries) {
  EXPECT_TRUE(Mentions(open_error(write_raw("{\"w\":{\"shape\":[1],\"data_offsets\":[0,1]}}", "a")),
                       "missing \"dtype\""));
  EXPECT_TRUE(Mentions(open_error(write_raw("{\"w\":3}")), "tensor entry is not a JSON object"));
  EXPECT_TRUE(Mentions(open_error(write_raw("{" + entry("w", "U8", "[-1]", 0, 0) + "}")),
                       "non-negative integers"));
  EXPECT_TRUE(Mentions(open_error(write_raw("{" + entry("w", "U8", "[1.0]", 0, 1) + "}", "a")),
                       "non-negative integers"));
  EXPECT_TRUE(
      Mentions(open_error(write_raw(
                   "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", "a")),
               "data_offsets"));
  Error e = open_error(write_raw("{" + entry("w", "U8", "[1]", 1, 0) + "}", "a"));
  EXPECT_TRUE(Mentions(e, "begin > end"));
  EXPECT_EQ(e.key(), "w");
}

TEST_F(SafetensorsTest, OffsetsOutOfRange) {
  const std::string header =
      "{" + entry("a", "F32", "[4]", 0, 16) + "," + entry("b", "F32", "[4]", 16, 32) + "}";
  Error e = open_error(write_raw(header, std::string(16, '\0')));
  EXPECT_TRUE(Mentions(e, "[16,32] extend past the end of the 16-byte data buffer"));
  EXPECT_EQ(e.key(), "b");
}

TEST_F(SafetensorsTest, OverlappingOffsets) {
  const std::string header =
      "{" + entry("a", "F32", "[4]", 0, 16) + "," + entry("b", "F32", "[4]", 8, 24) + "}";
  Error e = open_error(write_raw(header, std::string(24, '\0')));
  EXPECT_TRUE(Mentions(e, "overlap the previous tensor 'a'"));
  EXPECT_EQ(e.key(), "b");
}

TEST_F(SafetensorsTest, GapBetweenTensors) {
  const std::string header =
      "{" + entry("a", "F32", "[4]", 0, 16) + "," + entry("b", "F32", "[4]", 20, 36) + "}";
  Error e = open_error(write_raw(header, std::string(36, '\0')));
  EXPECT_TRUE(Mentions(e, "gap: expected begin 16"));
  EXPECT_EQ(e.key(), "b");
  // The first tensor must start at 0.
  Error first = open_error(write_raw("{" + entry("a", "U8", "[4]", 4, 8) + "}", "12345678"));
  EXPECT_TRUE(Mentions(first, "gap: expected begin 0"));
}

TEST_F(SafetensorsTest, WrongByteLengthForShape) {
  Error e =
      open_error(write_raw("{" + entry("w", "F32", "[2,2]", 0, 12) + "}", std::string(12, '\0')));
  EXPECT_TRUE(Mentions(e, "tensor byte length 12 != shape [2,2] x F32 = 16"));
  EXPECT_EQ(e.key(), "w");
}

TEST_F(SafetensorsTest, SubByteTensorMustFillWholeBytes) {
  // The reference rejects 3 × 4 bits = 12 bits (MisalignedSlice); so do we.
  Error e = open_error(write_raw("{" + entry("w", "F4", "[3]", 0, 2) + "}", "ab"));
  EXPECT_TRUE(Mentions(e, "12 bits, not a whole number of bytes"));
}

TEST_F(SafetensorsTest, ShapeOverflow) {
  const std::string big = std::to_string(uint64_t{1} << 62);
  Error e = open_error(write_raw("{" + entry("w", "F32", "[" + big + "," + big + "]", 0, 0) + "}"));
  EXPECT_TRUE(Mentions(e, "overflows"));
  EXPECT_EQ(e.key(), "w");
  EXPECT_TRUE(
      Mentions(open_error(write_raw("{" + entry("w", "U8", "[18446744073709551615]", 0, 0) + "}")),
               "non-negative integers"));  // beyond int64
}

TEST_F(SafetensorsTest, TruncatedData) {
  std::vector<float> data(8, 1.0f);
  const fs::path p = path("cut.safetensors");
  write_safetensors(p, {{"a", DType::F32, {4}, data.data()}, {"b", DType::F32, {4}, data.data()}});
  std::string bytes = read_bytes(p);
  write_bytes(p, bytes.substr(0, bytes.size() - 4));
  Error e = open_error(p);
  EXPECT_TRUE(Mentions(e, "truncated"));
  EXPECT_EQ(e.key(), "b");
  EXPECT_EQ(e.file(), p.string());
}

TEST_F(SafetensorsTest, TrailingBytesAfterData) {
  const std::string header = "{" + entry("a", "U8", "[2]", 0, 2) + "}";
  EXPECT_TRUE(Mentions(open_error(write_raw(header, "abc")),
                       "data buffer length mismatch: tensors cover 2 bytes but the data buffer "
                       "has 3"));
  EXPECT_TRUE(Mentions(open_error(write_raw("{}", "x")), "data buffer length mismatch"));
}

TEST_F(SafetensorsTest, DirectoryIsNotAFile) {
  EXPECT_TRUE(Mentions(open_error(dir_), "not a regular file"));
}

// ---- writer -------------------------------------------------------------------------------------

TEST_F(SafetensorsTest, WriterRejectsBadInput) {
  uint8_t data[4] = {};
  const fs::path p = path("bad.safetensors");
  Error dup = catch_error([&] {
    write_safetensors(p, {{"x", DType::U8, {1}, data}, {"x", DType::U8, {2}, data}});
  });
  EXPECT_TRUE(Mentions(dup, "duplicate tensor name"));
  EXPECT_EQ(dup.key(), "x");
  EXPECT_EQ(dup.file(), p.string());

  Error reserved = catch_error([&] {
    write_safetensors(p, {{"__metadata__", DType::U8, {1}, data}});
  });
  EXPECT_TRUE(Mentions(reserved, "reserved"));

  EXPECT_TRUE(Mentions(catch_error([&] {
                         write_safetensors(p, {{"x", DType::F4, {3}, data}});
                       }),
                       "not a whole number of bytes"));
  EXPECT_TRUE(Mentions(catch_error([&] {
                         write_safetensors(p, {{"x", DType::U8, {-2}, data}});
                       }),
                       "negative"));
  EXPECT_TRUE(Mentions(catch_error([&] {
                         write_safetensors(p, {{"x", DType::U8, {2}, nullptr}});
                       }),
                       "data is null"));
  EXPECT_TRUE(Mentions(catch_error([&] {
                         write_safetensors(p, {{"x", DType::U8, {1}, data}}, {{"k", "\xff"}});
                       }),
                       "cannot encode header"));
  EXPECT_FALSE(fs::exists(p));
  EXPECT_TRUE(folder_entries().empty());
}

TEST_F(SafetensorsTest, WriterFailureNamesPathAndLeavesNothing) {
  uint8_t data[1] = {};
  const fs::path p = path("no_such_folder") / "w.safetensors";
  Error e = catch_error([&] { write_safetensors(p, {{"x", DType::U8, {1}, data}}); });
  EXPECT_EQ(e.file(), p.string());
  EXPECT_TRUE(Mentions(e, "cannot create temporary file"));

  // Renaming onto a non-empty folder fails after the temp file was written: it must be removed.
  const fs::path blocked = path("blocked");
  fs::create_directories(blocked / "inside");
  Error rename = catch_error([&] { write_safetensors(blocked, {{"x", DType::U8, {1}, data}}); });
  EXPECT_TRUE(Mentions(rename, "cannot rename"));
  EXPECT_EQ(folder_entries(), std::vector<std::string>{"blocked"});
}

TEST_F(SafetensorsTest, OverwriteReplacesWholeFileAndLeavesNoTempFiles) {
  const fs::path p = path("w.safetensors");
  std::vector<float> big(1000, 2.0f);
  write_safetensors(p, {{"big", DType::F32, {1000}, big.data()}}, {{"v", "1"}});
  const auto big_size = fs::file_size(p);

  // Keep the old file mapped while it is replaced: the rename must not disturb the mapping.
  SafetensorsFile old_file = SafetensorsFile::open(p);

  std::vector<int32_t> small = {42};
  write_safetensors(p, {{"small", DType::I32, {1}, small.data()}});
  EXPECT_LT(fs::file_size(p), big_size);

  SafetensorsFile file = SafetensorsFile::open(p);
  ASSERT_EQ(file.tensors().size(), 1u);
  EXPECT_EQ(file.tensors()[0].name, "small");
  EXPECT_TRUE(file.metadata().empty());
  int32_t value;
  std::memcpy(&value, file.tensors()[0].data, sizeof value);
  EXPECT_EQ(value, 42);
  EXPECT_EQ(folder_entries(), std::vector<std::string>{"w.safetensors"});

  float old_value;
  std::memcpy(&old_value, old_file.find("big")->data + 999 * sizeof(float), sizeof old_value);
  EXPECT_EQ(old_value, 2.0f);
}

}  // namespace
}  // namespace sdtune::io
