#include "sdtune/io/json_config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include "sdtune/error.h"
#include "sdtune/io/read_file.h"

namespace sdtune::io {
namespace {

constexpr std::string_view kNonFinite = "__sdtune_nonfinite__:";

// Python's json module writes NaN, Infinity and -Infinity (diffusers does for e.g. DPM-Solver's
// lambda_min_clipped), which strict JSON lacks. Outside strings they become marker strings here
// and numbers again after parsing.
std::string quote_non_finite(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size())
        out += text[++i];
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    bool replaced = false;
    for (std::string_view word : {"-Infinity", "Infinity", "NaN"}) {
      if (text.compare(i, word.size(), word) == 0) {
        out += "\"" + std::string(kNonFinite) + std::string(word) + "\"";
        i += word.size() - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

void restore_non_finite(nlohmann::json& j) {
  if (j.is_string()) {
    const auto& s = j.get_ref<const std::string&>();
    if (s.rfind(kNonFinite, 0) != 0) return;
    const std::string word = s.substr(kNonFinite.size());
    j = word == "NaN" ? std::numeric_limits<double>::quiet_NaN()
                      : (word[0] == '-' ? -1.0 : 1.0) * std::numeric_limits<double>::infinity();
  } else if (j.is_structured()) {
    for (auto& child : j) restore_non_finite(child);
  }
}

// The int64_t that a JSON number holds exactly, if any. nlohmann keeps a literal above INT64_MAX as
// uint64, which get<int64_t>() would wrap to a negative value. A float is taken when asked and when
// it is an integer in range: converting NaN or a double outside int64_t's range is undefined.
std::optional<int64_t> exact_int64(const nlohmann::json& v, bool allow_float) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (allow_float && v.is_number_float()) {
    const double d = v.get<double>();
    if (d >= -0x1p63 && d < 0x1p63 && d == std::trunc(d)) return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

}  // namespace

nlohmann::json::parser_callback_t json_depth_limit(std::string source) {
  return [source = std::move(source)](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
    if (depth > kMaxJsonDepth)
      throw Error("JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels", source);
    return true;
  };
}

JsonConfig JsonConfig::load(const std::filesystem::path& path) {
  nlohmann::json json =
      nlohmann::json::parse(quote_non_finite(read_file(path)), json_depth_limit(path.string()),
                            /*allow_exceptions=*/false);
  if (json.is_discarded()) throw Error("not valid JSON", path.string());
  restore_non_finite(json);
  if (!json.is_object()) throw Error("top level is not a JSON object", path.string());
  return JsonConfig(std::move(json), path.string());
}

JsonConfig::JsonConfig(nlohmann::json json, std::string source)
    : json_(std::move(json)), source_(std::move(source)) {}

bool JsonConfig::has(std::string_view key) const {
  auto it = json_.find(key);
  return it != json_.end() && !it->is_null();
}

const nlohmann::json& JsonConfig::at(std::string_view key) const {
  if (!has(key)) throw Error("missing required key", source_, std::string(key));
  return *json_.find(key);
}

void JsonConfig::type_error(std::string_view key, std::string_view expected) const {
  throw Error("expected " + std::string(expected) + ", got " + at(key).dump(), source_,
              std::string(key));
}

int64_t JsonConfig::get_int(std::string_view key) const {
  // 8.0 is accepted as 8: some configs are written by tools that emit floats.
  if (auto value = exact_int64(at(key), /*allow_float=*/true)) return *value;
  type_error(key, "an integer");
}

int64_t JsonConfig::get_int(std::string_view key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}

double JsonConfig::get_double(std::string_view key) const {
  const auto& v = at(key);
  if (!v.is_number()) type_error(key, "a number");
  return v.get<double>();
}

double JsonConfig::get_double(std::string_view key, double fallback) const {
  return has(key) ? get_double(key) : fallback;
}

bool JsonConfig::get_bool(std::string_view key) const {
  const auto& v = at(key);
  if (!v.is_boolean()) type_error(key, "true or false");
  return v.get<bool>();
}

bool JsonConfig::get_bool(std::string_view key, bool fallback) const {
  return has(key) ? get_bool(key) : fallback;
}

std::string JsonConfig::get_string(std::string_view key) const {
  const auto& v = at(key);
  if (!v.is_string()) type_error(key, "a string");
  return v.get<std::string>();
}

std::string JsonConfig::get_string(std::string_view key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}

std::vector<int64_t> JsonConfig::get_int_list(std::string_view key) const {
  const auto& v = at(key);
  if (!v.is_array()) type_error(key, "a list of integers");
  std::vector<int64_t> out;
  for (const auto& e : v) {
    auto value = exact_int64(e, /*allow_float=*/false);
    if (!value) type_error(key, "a list of integers");
    out.push_back(*value);
  }
  return out;
}

std::vector<std::string> JsonConfig::get_string_list(std::string_view key) const {
  const auto& v = at(key);
  if (!v.is_array()) type_error(key, "a list of strings");
  std::vector<std::string> out;
  for (const auto& e : v) {
    if (!e.is_string()) type_error(key, "a list of strings");
    out.push_back(e.get<std::string>());
  }
  return out;
}

std::vector<int64_t> JsonConfig::get_int_or_list(std::string_view key, std::size_t n) const {
  const auto& v = at(key);
  if (v.is_number_integer()) return std::vector<int64_t>(n, get_int(key));
  std::vector<int64_t> list = get_int_list(key);
  if (list.size() != n)
    throw Error("expected " + std::to_string(n) + " values (one per block), got " +
                    std::to_string(list.size()),
                source_, std::string(key));
  return list;
}

std::vector<int64_t> JsonConfig::get_int_or_list(std::string_view key, std::size_t n,
                                                 int64_t fallback) const {
  return has(key) ? get_int_or_list(key, n) : std::vector<int64_t>(n, fallback);
}

}  // namespace sdtune::io
