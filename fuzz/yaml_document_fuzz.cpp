// libFuzzer target: arbitrary bytes as the LDM .yaml config beside a single-file checkpoint, read
// into JSON by io::parse_yaml (libyaml's event parser, with aliases refused and nesting bounded).
// What parses must be a JSON value that nlohmann can dump.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_common.h"
#include "sdtune/error.h"
#include "sdtune/io/yaml_document.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const nlohmann::json doc = sdtune::io::parse_yaml(text, "model.yaml");
    // Invalid UTF-8 in a string is kept as it is; dump() must not throw for it.
    doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } catch (const sdtune::Error&) {
    // refused: the expected outcome for most inputs
  }
  return 0;
}
