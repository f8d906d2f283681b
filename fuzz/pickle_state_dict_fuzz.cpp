// libFuzzer target: arbitrary bytes as the data.pkl of a torch.save archive, interpreted by the
// restricted pickle machine (src/io/pickle_machine). Refusals are sdtune::Errors; a state dict that
// parses must describe each tensor completely (a storage, as many strides as sizes).
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_common.h"
#include "io/pickle_machine.h"
#include "sdtune/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string pickle(reinterpret_cast<const char*>(data), size);
  try {
    const auto refs = sdtune::io::pickle::read_state_dict(pickle, "data.pkl");
    for (const auto& [key, t] : refs.tensors) {
      sdtune::fuzz::check(t.storage != nullptr, "a tensor without a storage", key);
      sdtune::fuzz::check(t.size.size() == t.stride.size(), "sizes and strides differ in length",
                          key);
      sdtune::fuzz::check(!t.storage->dtype.empty(), "a storage without an element type", key);
    }
  } catch (const sdtune::Error&) {
    // refused: the expected outcome for most inputs
  }
  return 0;
}
