#pragma once
// Typed, checked access to a JSON config file (config.json, model_index.json, ...). Unknown keys
// are ignored; a missing required key or a value of the wrong type is an sdtune::Error naming the
// file and the key.
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace sdtune::io {

// The deepest nesting sdtune reads in any JSON (configs, tokenizer files, safetensors headers):
// serde_json's limit, which the safetensors reference reads headers with, far above any real file.
// Deeper, a hostile file would overflow the stack in nlohmann's recursive dump() (error messages)
// and in the readers' own recursive walks.
constexpr int kMaxJsonDepth = 128;
// A callback for nlohmann::json::parse that throws sdtune::Error naming `source` when the nesting
// exceeds kMaxJsonDepth; it keeps every value, so the result is what parse() alone would give.
nlohmann::json::parser_callback_t json_depth_limit(std::string source);

class JsonConfig {
 public:
  // Reads and parses `path`; the top level must be a JSON object.
  static JsonConfig load(const std::filesystem::path& path);
  JsonConfig(nlohmann::json json, std::string source);

  // True when the key is present and not null (diffusers writes null for "use the default").
  bool has(std::string_view key) const;

  int64_t get_int(std::string_view key) const;
  int64_t get_int(std::string_view key, int64_t fallback) const;
  double get_double(std::string_view key) const;
  double get_double(std::string_view key, double fallback) const;
  bool get_bool(std::string_view key) const;
  bool get_bool(std::string_view key, bool fallback) const;
  std::string get_string(std::string_view key) const;
  std::string get_string(std::string_view key, const std::string& fallback) const;
  std::vector<int64_t> get_int_list(std::string_view key) const;
  std::vector<std::string> get_string_list(std::string_view key) const;
  // A value that is either one int (repeated n times) or a list of exactly n ints, as diffusers
  // allows for attention_head_dim, layers_per_block, ...
  std::vector<int64_t> get_int_or_list(std::string_view key, std::size_t n) const;
  std::vector<int64_t> get_int_or_list(std::string_view key, std::size_t n, int64_t fallback) const;

  const nlohmann::json& json() const { return json_; }
  const std::string& source() const { return source_; }

 private:
  const nlohmann::json& at(std::string_view key) const;
  [[noreturn]] void type_error(std::string_view key, std::string_view expected) const;

  nlohmann::json json_;
  std::string source_;
};

}  // namespace sdtune::io
