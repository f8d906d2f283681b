// libFuzzer target: arbitrary bytes as a prompt, encoded by ClipTokenizer with a small valid
// vocabulary (CLIP's layout: the 256 byte symbols, the same with "</w>", CLIP's first merges, then
// the start and end tokens), once with SD 1.x's pad token and once with SD 2.x's "!". Text that is
// not UTF-8 must end in sdtune::Error; every id must be in the vocabulary, and encode_padded must
// give exactly max_length ids framed by the start and end tokens.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fuzz_common.h"
#include "sdtune/error.h"
#include "sdtune/text/clip_tokenizer.h"

namespace {

using sdtune::fuzz::check;
using sdtune::text::ClipTokenizer;

// The first merges of CLIP's bpe_simple_vocab_16e6 (tests/helpers/clip_vocab.py), in rank order.
constexpr const char* kMerges[] = {
    "i n",     "t h",      "a n",     "r e",     "a r",      "e r",     "th e</w>", "in g</w>",
    "o u",     "o n",      "s t",     "o r",     "e n",      "o n</w>", "a l",      "a t",
    "e r</w>", "i t",      "i n</w>", "t o</w>", "r o",      "i s</w>", "l e",      "i c",
    "a t</w>", "an d</w>", "e d</w>", "o f</w>", "c h",      "o r</w>", "e s</w>",  "i l",
    "e l",     "s t</w>",  "a c",     "o m",     "a m",      "l o",     "a n</w>",  "a y</w>",
    "s h",     "r i",      "l i",     "t i",     "f or</w>", "n e",     "r a",      "h a",
    "d e",     "o l",      "v e</w>", "s i",     "u r",      "a l</w>", "s e",      "' s</w>",
    "u n",     "d i",      "b e",
};

// GPT-2's byte -> printable character map, as CLIP's vocabulary spells the bytes.
std::string byte_char(int b) {
  const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
  int cp = b;
  if (!printable) {
    cp = 256;
    for (int c = 0; c < b; ++c)
      if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE))) ++cp;
  }
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

std::pair<std::unordered_map<std::string, int64_t>,
          std::vector<std::pair<std::string, std::string>>>
small_vocab() {
  std::unordered_map<std::string, int64_t> vocab;
  std::vector<std::pair<std::string, std::string>> merges;
  for (int b = 0; b < 256; ++b) vocab.emplace(byte_char(b), b);
  for (int b = 0; b < 256; ++b) vocab.emplace(byte_char(b) + "</w>", 256 + b);
  for (const char* line : kMerges) {
    const std::string text(line);
    const auto space = text.find(' ');
    merges.emplace_back(text.substr(0, space), text.substr(space + 1));
    vocab.emplace(merges.back().first + merges.back().second, static_cast<int64_t>(vocab.size()));
  }
  vocab.emplace("<|startoftext|>", static_cast<int64_t>(vocab.size()));
  vocab.emplace("<|endoftext|>", static_cast<int64_t>(vocab.size()));
  return {vocab, merges};
}

void check_encoding(const ClipTokenizer& tokenizer, std::string_view prompt) {
  std::vector<int64_t> ids;
  try {
    ids = tokenizer.encode(prompt);
  } catch (const sdtune::Error&) {
    return;  // text that is not UTF-8
  }
  for (int64_t id : ids)
    check(id >= 0 && static_cast<size_t>(id) < tokenizer.vocab_size(), "id outside the vocab");
  bool truncated = false;
  const auto padded = tokenizer.encode_padded(prompt, &truncated);
  const auto max_length = static_cast<size_t>(tokenizer.max_length());
  check(padded.size() == max_length, "encode_padded is not max_length long");
  check(padded.front() == tokenizer.bos_id(), "encode_padded does not start with bos");
  const size_t kept = std::min(ids.size(), max_length - 2);
  check(truncated == (ids.size() > kept), "truncated flag wrong");
  check(
      std::equal(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(kept), padded.begin() + 1),
      "encode_padded does not hold encode()'s ids");
  check(padded[kept + 1] == tokenizer.eos_id(), "encode_padded has no eos after the ids");
  for (size_t i = kept + 2; i < max_length; ++i)
    check(padded[i] == tokenizer.pad_id(), "encode_padded not padded with pad_id");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const ClipTokenizer sd1 = [] {
    auto [vocab, merges] = small_vocab();
    return ClipTokenizer(vocab, merges, "<|endoftext|>", 77);
  }();
  static const ClipTokenizer sd2 = [] {
    auto [vocab, merges] = small_vocab();
    return ClipTokenizer(vocab, merges, "!", 16);
  }();
  const std::string_view prompt(reinterpret_cast<const char*>(data), size);
  check_encoding(sd1, prompt);
  check_encoding(sd2, prompt);
  return 0;
}
