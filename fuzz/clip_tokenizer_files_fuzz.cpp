// libFuzzer target: arbitrary bytes as the files of a tokenizer/ folder, read by
// ClipTokenizer::load, then a prompt encoded with what loaded. The input is split at NUL bytes
// (which none of these files can hold) into vocab.json, merges.txt, tokenizer_config.json,
// special_tokens_map.json, tokenizer.json and the prompt; an empty or missing part leaves its file
// out. A bad folder or a prompt that is not UTF-8 must end in sdtune::Error; encode_padded must
// give exactly max_length ids framed by the start and end tokens.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string_view>
#include <vector>

#include "fuzz_common.h"
#include "sdtune/error.h"
#include "sdtune/text/clip_tokenizer.h"

namespace {

using sdtune::fuzz::check;
using sdtune::text::ClipTokenizer;

constexpr std::array<const char*, 5> kFiles = {"vocab.json", "merges.txt", "tokenizer_config.json",
                                               "special_tokens_map.json", "tokenizer.json"};

void check_encoding(const ClipTokenizer& tokenizer, std::string_view prompt) {
  std::vector<int64_t> ids;
  try {
    ids = tokenizer.encode(prompt);
  } catch (const sdtune::Error&) {
    return;  // text that is not UTF-8
  }
  const auto padded = tokenizer.encode_padded(prompt);
  const auto max_length = static_cast<size_t>(tokenizer.max_length());
  check(max_length >= 3, "max_length below 3");
  check(padded.size() == max_length, "encode_padded is not max_length long");
  check(padded.front() == tokenizer.bos_id(), "encode_padded does not start with bos");
  const size_t kept = std::min(ids.size(), max_length - 2);
  check(
      std::equal(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(kept), padded.begin() + 1),
      "encode_padded does not hold encode()'s ids");
  check(padded[kept + 1] == tokenizer.eos_id(), "encode_padded has no eos after the ids");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  std::array<std::string_view, kFiles.size() + 1> parts{};
  for (auto& part : parts) {
    const size_t nul = rest.find('\0');
    part = rest.substr(0, nul);
    rest = nul == std::string_view::npos ? std::string_view() : rest.substr(nul + 1);
  }

  static const std::filesystem::path dir = [] {
    auto d = sdtune::fuzz::scratch_dir() / "tokenizer";
    std::filesystem::create_directories(d);
    return d;
  }();
  for (size_t i = 0; i < kFiles.size(); ++i) {
    if (parts[i].empty())
      std::filesystem::remove(dir / kFiles[i]);
    else
      sdtune::fuzz::write_file(dir / kFiles[i], parts[i]);
  }

  std::optional<ClipTokenizer> tokenizer;
  try {
    tokenizer.emplace(ClipTokenizer::load(dir));
  } catch (const sdtune::Error&) {
    return 0;  // the expected outcome for a malformed folder
  }
  check_encoding(*tokenizer, parts.back());
  return 0;
}
