#pragma once
// The CLIP BPE vocabulary, compiled into sdtune: transformers' vocab.json and merges.txt as SD 1.x
// and SD 2.x publish them (both tokenize with OpenAI's bpe_simple_vocab_16e6; the copy is
// world/base/tokenizer, built from open-clip-torch's file). Single-file checkpoints carry no
// tokenizer, so a folder made from one takes these.
#include <string_view>

namespace sdtune::text {

std::string_view clip_vocab_json();
std::string_view clip_merges_txt();

}  // namespace sdtune::text
