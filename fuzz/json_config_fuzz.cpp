// libFuzzer target: arbitrary bytes as a config.json / scheduler_config.json / model_index.json,
// read by JsonConfig::load and ModelFolder::open, then every typed getter the model and scheduler
// config readers use, on every key of the file. A bad file or value must end in sdtune::Error; a
// value a getter returns must be the file's value.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "fuzz_common.h"
#include "sdtune/error.h"
#include "sdtune/io/json_config.h"
#include "sdtune/io/model_folder.h"

namespace {

using sdtune::fuzz::check;
using sdtune::io::JsonConfig;

// Runs one getter: sdtune::Error is the expected refusal of a value of the wrong type or size.
template <typename F>
void attempt(F&& f) {
  try {
    f();
  } catch (const sdtune::Error&) {
  }
}

// The int64 that `v` holds exactly, if any.
std::optional<int64_t> exact_int(const nlohmann::json& v) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      return static_cast<int64_t>(u);
    return std::nullopt;
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  return std::nullopt;
}

void check_int(const nlohmann::json& v, int64_t got, const std::string& key) {
  if (auto exact = exact_int(v)) {
    check(got == *exact, "integer read back wrong", key);
  } else {
    // Only a float that holds an integer is taken (8.0 as 8), and only that integer.
    check(v.is_number_float() && static_cast<double>(got) == v.get<double>(),
          "get_int accepted a value that is not that integer", key);
  }
}

void exercise_getters(const JsonConfig& config) {
  for (const auto& item : config.json().items()) {
    // Named copies: clang 14's lambdas cannot capture structured bindings.
    const std::string& key = item.key();
    const nlohmann::json& value = item.value();
    if (!config.has(key)) {
      check(value.is_null(), "has() is false for a present non-null key", key);
      check(config.get_int(key, 7) == 7, "fallback not returned for a null key", key);
      continue;
    }
    attempt([&] { check_int(value, config.get_int(key), key); });
    attempt([&] { config.get_double(key); });
    attempt([&] { check(config.get_bool(key) == value.get<bool>(), "bool read back wrong", key); });
    attempt(
        [&] { check(config.get_string(key) == value.get<std::string>(), "string wrong", key); });
    attempt([&] {
      const auto list = config.get_int_list(key);
      check(list.size() == value.size(), "int list of the wrong size", key);
      for (size_t i = 0; i < list.size(); ++i) check_int(value[i], list[i], key);
    });
    attempt([&] {
      check(config.get_string_list(key).size() == value.size(), "string list wrong size", key);
    });
    // The UNet reader asks for one value per block; SD configs have up to 4 blocks.
    for (size_t n = 0; n <= 4; ++n) {
      attempt([&] {
        const auto list = config.get_int_or_list(key, n);
        check(list.size() == n, "get_int_or_list gave the wrong count", key);
        for (size_t i = 0; i < n; ++i) check_int(value.is_array() ? value[i] : value, list[i], key);
      });
    }
  }
  check(config.get_int("\x01missing", -3) == -3, "fallback not returned for a missing key");
  check(config.get_int_or_list("\x01missing", 2, 5).size() == 2, "fallback list of wrong size");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto path = sdtune::fuzz::scratch_dir() / "model_index.json";
  sdtune::fuzz::write_file(path, text);

  std::optional<JsonConfig> config;
  try {
    config.emplace(JsonConfig::load(path));
  } catch (const sdtune::Error&) {
  }
  // Strict JSON holds no NaN/Infinity outside strings, so the rewrite that admits Python's
  // spellings must leave it as it is (unless a string looks like that rewrite's own marker).
  nlohmann::json strict;
  try {
    strict = nlohmann::json::parse(text, sdtune::io::json_depth_limit("strict"), false);
  } catch (const sdtune::Error&) {
    strict = nlohmann::json::value_t::discarded;  // nested too deep: refused by design
  }
  if (!strict.is_discarded() && strict.is_object() &&
      text.find("__sdtune_nonfinite__") == std::string_view::npos)
    check(config && config->json() == strict, "strict JSON object not read as itself");
  if (config) exercise_getters(*config);

  attempt([&] { sdtune::io::ModelFolder::open(sdtune::fuzz::scratch_dir()); });
  return 0;
}
