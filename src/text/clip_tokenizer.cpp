#include "sdtune/text/clip_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <queue>

#include "sdtune/error.h"
#include "sdtune/io/json_config.h"
#include "sdtune/io/model_folder.h"

namespace sdtune::text {
namespace {

using nlohmann::json;

constexpr std::string_view kBosToken = "<|startoftext|>";
constexpr std::string_view kEosToken = "<|endoftext|>";  // Also CLIP's unk token.
constexpr std::string_view kEndOfWord = "</w>";
constexpr int64_t kDefaultMaxLength = 77;
constexpr int64_t kLargestMaxLength = 1024;  // Above this a config value is a "no limit" sentinel.

// CLIP's pre-tokenizer pattern, then the one ByteLevel re-splits each piece with (GPT-2's). `\s` is
// spelled out as [\t\n\x{0B}\f\r\x{85}\p{Z}]: tokenizers uses Oniguruma, whose Unicode \s is that,
// while PCRE2's \s also takes U+180E.
constexpr char kClipPattern[] =
    R"(<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|)"
    R"([^\t\n\x{0B}\f\r\x{85}\p{Z}\p{L}\p{N}]+)";
// The second pass only changes the special-token alternatives above: "<|endoftext|>" typed in
// another case is lowercased into one CLIP piece, which GPT-2's pattern cuts into "<|",
// "endoftext", "|>", each with its own "</w>".
constexpr char kByteLevelPattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\t\n\x{0B}\f\r\x{85}\p{Z}\p{L}\p{N}]+|)"
    R"([\t\n\x{0B}\f\r\x{85}\p{Z}]+(?![^\t\n\x{0B}\f\r\x{85}\p{Z}])|[\t\n\x{0B}\f\r\x{85}\p{Z}]+)";

struct Pcre2CodeFree {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};
struct Pcre2MatchDataFree {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};

std::unique_ptr<pcre2_code, Pcre2CodeFree> compile(const char* pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* compiled = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (compiled == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    throw Error("cannot compile the pattern " + std::string(pattern) + " at offset " +
                std::to_string(error_offset) + ": " + reinterpret_cast<char*>(message));
  }
  return std::unique_ptr<pcre2_code, Pcre2CodeFree>(compiled);
}

// Compiled once and shared: a compiled PCRE2 pattern is read-only during matching, so concurrent
// encode() calls only need their own match data.
const pcre2_code* clip_pattern() {
  static const auto code = compile(kClipPattern);
  return code.get();
}
const pcre2_code* byte_level_pattern() {
  static const auto code = compile(kByteLevelPattern);
  return code.get();
}

// Calls fn(match) for each successive match of `pattern` in `subject` (valid UTF-8); the text
// between matches is dropped, like tokenizers' Split with behavior "removed" and invert.
template <typename Fn>
void for_each_match(const pcre2_code* pattern, std::string_view subject, Fn&& fn) {
  const std::unique_ptr<pcre2_match_data, Pcre2MatchDataFree> match(
      pcre2_match_data_create_from_pattern(pattern, nullptr));
  const auto* data = reinterpret_cast<PCRE2_SPTR>(subject.data());
  PCRE2_SIZE offset = 0;
  while (offset < subject.size()) {
    // The subject comes from utf8proc, so PCRE2's per-call validity scan can be skipped.
    const int rc = pcre2_match(pattern, data, subject.size(), offset, PCRE2_NO_UTF_CHECK,
                               match.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      throw Error(std::string("cannot split text: ") + reinterpret_cast<char*>(message));
    }
    const PCRE2_SIZE* range = pcre2_get_ovector_pointer(match.get());
    // Neither pattern matches the empty string, so every match moves forward.
    fn(subject.substr(range[0], range[1] - range[0]));
    offset = range[1];
  }
}

// GPT-2's byte -> printable character table (UTF-8 encoded), as used by CLIP's vocab: printable
// Latin-1 bytes map to themselves, the others to U+0100 upwards in byte order.
const std::array<std::string, 256>& byte_chars() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> chars;
    auto printable = [](int b) {
      return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    utf8proc_int32_t next_extra = 256;
    for (int b = 0; b < 256; ++b) {
      const utf8proc_int32_t cp = printable(b) ? b : next_extra++;
      utf8proc_uint8_t buf[4];
      const utf8proc_ssize_t n = utf8proc_encode_char(cp, buf);
      chars[b].assign(reinterpret_cast<const char*>(buf), static_cast<std::size_t>(n));
    }
    return chars;
  }();
  return table;
}

// NFC then lowercase, as tokenizers' normalizer. Its middle step (whitespace runs -> " ") is left
// out: the split pattern never matches whitespace, so collapsing it cannot change any piece.
std::string normalize(std::string_view text) {
  utf8proc_uint8_t* composed = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                   static_cast<utf8proc_ssize_t>(text.size()), &composed,
                   static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) {
    throw Error(std::string("cannot tokenize text: ") + utf8proc_errmsg(n));
  }
  const std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owner(composed, &std::free);

  // Rust's char::to_lowercase, per character: the simple mapping, except U+0130 whose full
  // lowercase is two characters (the only unconditional multi-character entry in
  // SpecialCasing.txt; utf8proc only has the simple mappings). No final-sigma context.
  std::string out;
  out.reserve(static_cast<std::size_t>(n) + 8);
  utf8proc_uint8_t buf[4];
  for (utf8proc_ssize_t pos = 0; pos < n;) {
    utf8proc_int32_t cp = 0;
    pos += utf8proc_iterate(composed + pos, n - pos, &cp);
    if (cp == 0x130) {
      out += "i\xCC\x87";  // U+0069 U+0307
      continue;
    }
    const utf8proc_ssize_t len = utf8proc_encode_char(utf8proc_tolower(cp), buf);
    out.append(reinterpret_cast<const char*>(buf), static_cast<std::size_t>(len));
  }
  return out;
}

json read_json(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open file", path.string());
  try {
    return json::parse(in, io::json_depth_limit(path.string()));
  } catch (const json::exception& e) {
    throw Error(std::string("invalid JSON: ") + e.what(), path.string());
  }
}

// A token in a tokenizer config: a string, or an AddedToken object {"content": ...}. nullopt when
// absent or null.
std::optional<std::string> token_field(const json& config, const char* key,
                                       const std::filesystem::path& path) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    const auto content = it->find("content");
    if (content != it->end() && content->is_string()) return content->get<std::string>();
  }
  throw Error("expected a string or an object with a string \"content\"", path.string(), key);
}

}  // namespace

namespace {

std::unordered_map<std::string, int64_t> parse_vocab(const json& vocab_json,
                                                     const std::filesystem::path& source) {
  if (!vocab_json.is_object())
    throw Error("expected an object mapping token to id", source.string());
  std::unordered_map<std::string, int64_t> vocab;
  vocab.reserve(vocab_json.size());
  for (const auto& [token, id] : vocab_json.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
        id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      throw Error("expected a non-negative integer id, got " + id.dump(), source.string(), token);
    }
    vocab.emplace(token, id.get<int64_t>());
  }
  for (std::string_view token : {kBosToken, kEosToken}) {
    if (!vocab.contains(std::string(token))) {
      throw Error("special token " + std::string(token) + " is not in the vocabulary",
                  source.string());
    }
  }
  return vocab;
}

// One merge rule "left right"; `where` says which line or entry for the error.
std::pair<std::string, std::string> parse_merge(const std::string& line, const std::string& where,
                                                const std::filesystem::path& source) {
  const std::size_t space = line.find(' ');
  if (space == std::string::npos || space == 0 || space + 1 == line.size() ||
      line.find(' ', space + 1) != std::string::npos) {
    throw Error(where + ": expected \"left right\", got \"" + line + "\"", source.string());
  }
  return {line.substr(0, space), line.substr(space + 1)};
}

}  // namespace

ClipTokenizer ClipTokenizer::from_pipeline(const io::ModelFolder& folder) {
  return load(folder.component_dir("tokenizer"));
}

ClipTokenizer ClipTokenizer::load(const std::filesystem::path& dir) {
  // Published SD folders hold vocab.json + merges.txt; folders saved by transformers 5 hold only
  // tokenizer.json, whose "model" section carries the same vocabulary and merges.
  std::filesystem::path vocab_path = dir / "vocab.json";
  std::filesystem::path merges_path = dir / "merges.txt";
  std::unordered_map<std::string, int64_t> vocab;
  std::vector<std::pair<std::string, std::string>> merges;
  if (!std::filesystem::exists(vocab_path) && std::filesystem::exists(dir / "tokenizer.json")) {
    vocab_path = merges_path = dir / "tokenizer.json";
    const json tokenizer = read_json(vocab_path);
    const json* model =
        tokenizer.is_object() && tokenizer.contains("model") ? &tokenizer["model"] : nullptr;
    if (!model || !model->is_object() || !model->contains("vocab") || !model->contains("merges") ||
        !(*model)["merges"].is_array())
      throw Error("expected a BPE \"model\" with \"vocab\" and \"merges\"", vocab_path.string(),
                  "model");
    vocab = parse_vocab((*model)["vocab"], vocab_path);
    int index = 0;
    for (const auto& m : (*model)["merges"]) {
      const std::string where = "merge " + std::to_string(++index);
      // tokenizers writes merges as "a b" strings (older) or ["a", "b"] pairs (newer).
      if (m.is_string()) {
        merges.push_back(parse_merge(m.get<std::string>(), where, vocab_path));
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        throw Error(where + ": expected \"left right\" or [left, right], got " + m.dump(),
                    vocab_path.string());
      }
    }
  } else {
    vocab = parse_vocab(read_json(vocab_path), vocab_path);
    std::ifstream merges_in(merges_path, std::ios::binary);
    if (!merges_in) throw Error("cannot open file", merges_path.string());
    std::string line;
    for (int line_number = 1; std::getline(merges_in, line); ++line_number) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty() || line.starts_with("#version")) continue;
      merges.push_back(parse_merge(line, "line " + std::to_string(line_number), merges_path));
    }
  }

  // transformers' legacy loading: special_tokens_map.json overrides tokenizer_config.json, unless
  // the config lists its added tokens itself (added_tokens_decoder).
  std::string pad_token(kEosToken);
  std::filesystem::path pad_source = vocab_path;
  int64_t max_length = kDefaultMaxLength;
  bool config_has_added_tokens = false;
  const std::filesystem::path config_path = dir / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) {
    const json config = read_json(config_path);
    if (!config.is_object()) throw Error("expected a JSON object", config_path.string());
    if (auto pad = token_field(config, "pad_token", config_path)) {
      pad_token = *pad;
      pad_source = config_path;
    }
    config_has_added_tokens = config.contains("added_tokens_decoder");
    if (const auto it = config.find("model_max_length"); it != config.end() && !it->is_null()) {
      if (!it->is_number()) {
        throw Error("expected a number, got " + it->dump(), config_path.string(),
                    "model_max_length");
      }
      // transformers writes ~1e30 for "no limit"; only a plausible CLIP length is taken.
      const double value = it->get<double>();
      if (value >= 3 && value <= kLargestMaxLength && value == static_cast<int64_t>(value)) {
        max_length = static_cast<int64_t>(value);
      }
    }
  }
  const std::filesystem::path map_path = dir / "special_tokens_map.json";
  if (!config_has_added_tokens && std::filesystem::exists(map_path)) {
    const json map = read_json(map_path);
    if (!map.is_object()) throw Error("expected a JSON object", map_path.string());
    if (auto pad = token_field(map, "pad_token", map_path)) {
      pad_token = *pad;
      pad_source = map_path;
    }
  }
  if (!vocab.contains(pad_token)) {
    throw Error("pad token \"" + pad_token + "\" is not in the vocabulary (" +
                    vocab_path.filename().string() + ")",
                pad_source.string(), "pad_token");
  }

  // Vocabulary and pad are checked above, so what the constructor can still reject is a merge.
  try {
    return ClipTokenizer(std::move(vocab), std::move(merges), std::move(pad_token), max_length);
  } catch (const Error& e) {
    throw e.with_file(merges_path.string());
  }
}

ClipTokenizer::ClipTokenizer(std::unordered_map<std::string, int64_t> vocab,
                             std::vector<std::pair<std::string, std::string>> merges,
                             std::string pad_token, int64_t max_length)
    : vocab_(std::move(vocab)), max_length_(max_length) {
  auto id_of = [this](std::string_view token, const char* what) {
    const auto it = vocab_.find(std::string(token));
    if (it == vocab_.end()) {
      throw Error(std::string(what) + " \"" + std::string(token) + "\" is not in the vocabulary");
    }
    if (it->second < 0 || it->second > std::numeric_limits<int32_t>::max()) {
      throw Error("id " + std::to_string(it->second) + " of \"" + std::string(token) +
                  "\" is out of range");
    }
    return it->second;
  };
  if (max_length_ < 3) {
    throw Error("max_length must be at least 3, got " + std::to_string(max_length_));
  }
  bos_id_ = id_of(kBosToken, "start token");
  eos_id_ = id_of(kEosToken, "end token");
  pad_id_ = id_of(pad_token, "pad token");

  // tokenizers builds its merge map by plain insertion, so a repeated pair keeps its last rank.
  merges_.reserve(merges.size());
  for (std::size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    const std::string context =
        "merge " + std::to_string(rank + 1) + " (\"" + left + " " + right + "\"): token";
    const auto left_id = static_cast<uint64_t>(id_of(left, context.c_str()));
    const auto right_id = static_cast<uint64_t>(id_of(right, context.c_str()));
    const int64_t merged_id = id_of(left + right, context.c_str());
    merges_[left_id << 32 | right_id] = {static_cast<int64_t>(rank), merged_id};
  }

  const auto& chars = byte_chars();
  for (int b = 0; b < 256; ++b) {
    const auto alone = vocab_.find(chars[b]);
    byte_ids_[b] = alone == vocab_.end() ? -1 : alone->second;
    const auto end = vocab_.find(chars[b] + std::string(kEndOfWord));
    byte_end_ids_[b] = end == vocab_.end() ? -1 : end->second;
  }

  special_tokens_ = {{std::string(kBosToken), bos_id_}, {std::string(kEosToken), eos_id_}};
  if (pad_token != kBosToken && pad_token != kEosToken && !pad_token.empty()) {
    special_tokens_.emplace_back(std::move(pad_token), pad_id_);
  }
  // Surface a pattern error at construction rather than at the first encode().
  clip_pattern();
  byte_level_pattern();
}

std::vector<int64_t> ClipTokenizer::encode(std::string_view text) const {
  // Special tokens are cut out of the raw text first, leftmost-longest and case-sensitive, like
  // tokenizers' added vocabulary (they are not normalized).
  std::vector<int64_t> ids;
  std::size_t segment_start = 0;
  for (std::size_t pos = 0; pos < text.size();) {
    const std::pair<std::string, int64_t>* best = nullptr;
    for (const auto& special : special_tokens_) {
      if (text.substr(pos).starts_with(special.first) &&
          (best == nullptr || special.first.size() > best->first.size())) {
        best = &special;
      }
    }
    if (best == nullptr) {
      ++pos;
      continue;
    }
    encode_segment(text.substr(segment_start, pos - segment_start), ids);
    ids.push_back(best->second);
    pos += best->first.size();
    segment_start = pos;
  }
  encode_segment(text.substr(segment_start), ids);
  return ids;
}

std::vector<int64_t> ClipTokenizer::encode_padded(std::string_view text, bool* truncated) const {
  const std::vector<int64_t> ids = encode(text);
  const auto room = static_cast<std::size_t>(max_length_ - 2);
  const std::size_t kept = std::min(ids.size(), room);
  if (truncated != nullptr) *truncated = ids.size() > room;
  std::vector<int64_t> out;
  out.reserve(static_cast<std::size_t>(max_length_));
  out.push_back(bos_id_);
  out.insert(out.end(), ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(kept));
  out.push_back(eos_id_);
  out.resize(static_cast<std::size_t>(max_length_), pad_id_);
  return out;
}

void ClipTokenizer::encode_segment(std::string_view text, std::vector<int64_t>& ids) const {
  if (text.empty()) return;
  const std::string normalized = normalize(text);
  const pcre2_code* byte_level = byte_level_pattern();
  for_each_match(clip_pattern(), normalized, [&](std::string_view piece) {
    for_each_match(byte_level, piece, [&](std::string_view word) { bpe(word, ids); });
  });
}

// tokenizers' BPE::merge_word + Word::merge_all: one symbol per byte (the last one carrying
// "</w>"), unknown symbols become unk one by one (fuse_unk=false), then the pair of lowest rank
// (leftmost on a tie) is merged until none is left. The heap mirrors its stale-entry checks so
// even inconsistent merge lists give the same result.
void ClipTokenizer::bpe(std::string_view piece, std::vector<int64_t>& ids) const {
  struct Symbol {
    int64_t id;
    int prev, next;
    bool removed;
  };
  struct Candidate {
    int64_t rank;
    int pos;
    int64_t new_id;
    bool operator<(const Candidate& other) const {  // Inverted: std::priority_queue is a max-heap.
      return rank != other.rank ? rank > other.rank : pos > other.pos;
    }
  };

  const int n = static_cast<int>(piece.size());
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  for (int i = 0; i < n; ++i) {
    const auto byte = static_cast<unsigned char>(piece[i]);
    int64_t id = i + 1 == n ? byte_end_ids_[byte] : byte_ids_[byte];
    if (id < 0) id = eos_id_;  // CLIP's unk token is <|endoftext|>.
    symbols.push_back({id, i - 1, i + 1 < n ? i + 1 : -1, false});
  }

  auto find_merge = [this](int64_t left, int64_t right) -> const std::pair<int64_t, int64_t>* {
    const auto it = merges_.find(static_cast<uint64_t>(left) << 32 | static_cast<uint64_t>(right));
    return it == merges_.end() ? nullptr : &it->second;
  };
  std::priority_queue<Candidate> queue;
  for (int i = 0; i + 1 < n; ++i) {
    if (const auto* m = find_merge(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->first, i, m->second});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.removed || left.next == -1) continue;
    Symbol& right = symbols[left.next];
    const auto* current = find_merge(left.id, right.id);
    if (current == nullptr || current->second != top.new_id) continue;  // Stale entry.

    left.id = top.new_id;
    right.removed = true;
    left.next = right.next;
    if (left.next != -1) symbols[left.next].prev = top.pos;
    if (left.prev != -1) {
      if (const auto* m = find_merge(symbols[left.prev].id, left.id)) {
        queue.push({m->first, left.prev, m->second});
      }
    }
    if (left.next != -1) {
      if (const auto* m = find_merge(left.id, symbols[left.next].id)) {
        queue.push({m->first, top.pos, m->second});
      }
    }
  }
  for (const Symbol& symbol : symbols) {
    if (!symbol.removed) ids.push_back(symbol.id);
  }
}

}  // namespace sdtune::text
