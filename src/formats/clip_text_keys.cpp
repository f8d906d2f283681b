#include "sdtune/formats/clip_text_keys.h"

namespace sdtune::formats {

io::StateDict canonical_clip_text_keys(io::StateDict state) {
  static const std::string prefix = "text_model.";
  io::StateDict out;
  for (auto& [key, tensor] : state) {
    // Only the text transformer's own top-level names are re-prefixed; anything else (a stray
    // key of another model) is kept as is, so that loading reports it as unexpected.
    const bool bare = key.rfind("embeddings.", 0) == 0 || key.rfind("encoder.", 0) == 0 ||
                      key.rfind("final_layer_norm.", 0) == 0;
    out.emplace(bare ? prefix + key : key, std::move(tensor));
  }
  return out;
}

const std::vector<std::string>& clip_text_ignored_keys() {
  static const std::vector<std::string> keys{"text_model.embeddings.position_ids"};
  return keys;
}

}  // namespace sdtune::formats
