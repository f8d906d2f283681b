#pragma once
// Key names of CLIP text-encoder checkpoints. sdtune's canonical names are those of published SD
// checkpoints (transformers 4: "text_model.encoder.layers.0..."), which every transformers
// version loads. transformers 5 saves CLIPTextModel without the "text_model." prefix.
#include <string>
#include <vector>

#include "sdtune/io/state_dict.h"

namespace sdtune::formats {

// Returns the state dict with canonical keys: adds "text_model." where a checkpoint saved by
// transformers 5 lacks it; leaves canonical checkpoints unchanged.
io::StateDict canonical_clip_text_keys(io::StateDict state);

// State-dict keys of old checkpoints that carry no weights (a persistent position_ids buffer).
const std::vector<std::string>& clip_text_ignored_keys();

}  // namespace sdtune::formats
