// libFuzzer target: arbitrary bytes as the tokenizer files of a BLIP model folder, read by
// BertTokenizer::load, then a text encoded and its ids decoded. The input is split at NUL bytes
// into tokenizer.json, vocab.txt, added_tokens.json and the text; an empty part leaves its file
// out. A bad folder must end in sdtune::Error (never a huge allocation: ids are bounded); what
// loads must frame every encoding with [CLS] and [SEP] and decode any ids.
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string_view>
#include <vector>

#include "fuzz_common.h"
#include "sdtune/error.h"
#include "sdtune/text/bert_tokenizer.h"

namespace {

constexpr std::array<const char*, 3> kFiles = {"tokenizer.json", "vocab.txt", "added_tokens.json"};

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
    auto d = sdtune::fuzz::scratch_dir() / "bert";
    std::filesystem::create_directories(d);
    return d;
  }();
  for (size_t i = 0; i < kFiles.size(); ++i) {
    if (parts[i].empty())
      std::filesystem::remove(dir / kFiles[i]);
    else
      sdtune::fuzz::write_file(dir / kFiles[i], parts[i]);
  }
  std::optional<sdtune::text::BertTokenizer> tokenizer;
  try {
    tokenizer.emplace(sdtune::text::BertTokenizer::load(dir));
  } catch (const sdtune::Error&) {
    return 0;  // the expected outcome for a malformed folder
  }
  const std::vector<int64_t> ids = tokenizer->encode(parts.back());
  sdtune::fuzz::check(ids.size() >= 2, "an encoding without [CLS] and [SEP]");
  sdtune::fuzz::check(
      ids.front() == tokenizer->id_of("[CLS]") && ids.back() == tokenizer->id_of("[SEP]"),
      "an encoding not framed by [CLS] and [SEP]");
  tokenizer->decode(ids);
  tokenizer->decode({-1, 0, 1, 1 << 30});
  return 0;
}
