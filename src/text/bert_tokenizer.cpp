#include "sdtune/text/bert_tokenizer.h"

#include <utf8proc.h>

#include <fstream>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "sdtune/error.h"
#include "sdtune/io/json_config.h"
#include "sdtune/io/read_file.h"

namespace sdtune::text {
namespace fs = std::filesystem;
namespace {

constexpr size_t kMaxWordChars = 100;  // longer words are [UNK], as WordPiece's default
// Ids index a table: a file naming id 10^12 must not make us allocate it. BERT's vocabulary has
// 30,522 entries; multilingual ones a few hundred thousand.
constexpr int64_t kMaxTokenId = 1 << 24;

// A token id from JSON: an integer within int64 (a float or a huge number is an Error, never a
// conversion of it).
int64_t token_id(const nlohmann::json& j, const fs::path& file) {
  if (!j.is_number_integer() ||
      (j.is_number_unsigned() &&
       j.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())))
    throw Error("a token id that is not an integer: " + j.dump(), file.string());
  return j.get<int64_t>();
}

std::vector<int32_t> code_points(std::string_view text) {
  std::vector<int32_t> out;
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(text.size());
  while (left > 0) {
    utf8proc_int32_t cp = 0;
    utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
    if (n <= 0) {  // invalid UTF-8: the replacement character, which clean-up drops
      cp = 0xFFFD;
      n = 1;
    }
    out.push_back(cp);
    p += n;
    left -= n;
  }
  return out;
}

void append_utf8(std::string& s, int32_t cp) {
  utf8proc_uint8_t buf[4];
  const utf8proc_ssize_t n = utf8proc_encode_char(cp, buf);
  s.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
}

utf8proc_category_t category(int32_t cp) {
  return utf8proc_category(cp);
}

bool is_whitespace(int32_t c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || category(c) == UTF8PROC_CATEGORY_ZS;
}
bool is_control(int32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  const auto k = category(c);
  return k == UTF8PROC_CATEGORY_CC || k == UTF8PROC_CATEGORY_CF || k == UTF8PROC_CATEGORY_CN ||
         k == UTF8PROC_CATEGORY_CO || k == UTF8PROC_CATEGORY_CS;
}
bool is_punctuation(int32_t c) {
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
      (c >= 123 && c <= 126))
    return true;
  const auto k = category(c);
  return k >= UTF8PROC_CATEGORY_PC && k <= UTF8PROC_CATEGORY_PO;
}
bool is_cjk(int32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// BertNormalizer: drop NUL, U+FFFD and control characters, whitespace to ' ', spaces around CJK
// ideographs, then (lowercasing) accents stripped (NFD, marks removed) and lowercase.
std::vector<int32_t> normalize(std::string_view text, bool lowercase) {
  std::string cleaned;
  for (int32_t c : code_points(text)) {
    if (c == 0 || c == 0xFFFD || is_control(c)) continue;
    if (is_whitespace(c)) {
      cleaned += ' ';
    } else if (is_cjk(c)) {
      cleaned += ' ';
      append_utf8(cleaned, c);
      cleaned += ' ';
    } else {
      append_utf8(cleaned, c);
    }
  }
  if (!lowercase) return code_points(cleaned);
  utf8proc_uint8_t* nfd = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(cleaned.data()),
                   static_cast<utf8proc_ssize_t>(cleaned.size()), &nfd, UTF8PROC_DECOMPOSE);
  if (n < 0) return code_points(cleaned);
  const std::string decomposed(reinterpret_cast<const char*>(nfd), static_cast<size_t>(n));
  std::free(nfd);
  std::vector<int32_t> out;
  for (int32_t c : code_points(decomposed)) {
    if (category(c) == UTF8PROC_CATEGORY_MN) continue;
    out.push_back(utf8proc_tolower(c));
  }
  return out;
}

}  // namespace

BertTokenizer::BertTokenizer(std::unordered_map<std::string, int64_t> vocab,
                             std::vector<std::pair<std::string, int64_t>> special, bool lowercase)
    : vocab_(std::move(vocab)), special_(std::move(special)), lowercase_(lowercase) {
  // An empty special token would match everywhere and nowhere advance.
  for (const auto& [t, id] : special_)
    if (t.empty()) throw Error("an empty special token (id " + std::to_string(id) + ")");
  for (const auto& [t, id] : vocab_)
    if (id < 0 || id >= kMaxTokenId)
      throw Error("token id " + std::to_string(id) + " of '" + t + "' is outside [0, 2^24)");
  for (const auto& [t, id] : special_)
    if (id < 0 || id >= kMaxTokenId)
      throw Error("token id " + std::to_string(id) + " of '" + t + "' is outside [0, 2^24)");
  int64_t size = 0;
  for (const auto& [t, id] : vocab_) size = std::max(size, id + 1);
  for (const auto& [t, id] : special_) size = std::max(size, id + 1);
  tokens_.resize(static_cast<size_t>(size));
  is_special_.assign(static_cast<size_t>(size), false);
  for (const auto& [t, id] : vocab_) tokens_[static_cast<size_t>(id)] = t;
  for (const auto& [t, id] : special_) {
    tokens_[static_cast<size_t>(id)] = t;
    is_special_[static_cast<size_t>(id)] = true;
    vocab_[t] = id;
  }
  unk_ = id_of("[UNK]");
  cls_ = id_of("[CLS]");
  sep_ = id_of("[SEP]");
  for (const char* t : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"})
    if (const auto it = vocab_.find(t); it != vocab_.end())
      is_special_[static_cast<size_t>(it->second)] = true;
}

int64_t BertTokenizer::id_of(const std::string& token) const {
  const auto it = vocab_.find(token);
  if (it == vocab_.end()) throw Error("the tokenizer has no " + token + " token");
  return it->second;
}

void BertTokenizer::encode_words(std::string_view text, std::vector<int64_t>& out) const {
  // Words: split on whitespace, each punctuation character a word of its own.
  std::vector<std::vector<int32_t>> words(1);
  for (int32_t c : normalize(text, lowercase_)) {
    if (is_whitespace(c)) {
      if (!words.back().empty()) words.emplace_back();
    } else if (is_punctuation(c)) {
      if (!words.back().empty()) words.emplace_back();
      words.back().push_back(c);
      words.emplace_back();
    } else {
      words.back().push_back(c);
    }
  }
  for (const auto& word : words) {
    if (word.empty()) continue;
    if (word.size() > kMaxWordChars) {
      out.push_back(unk_);
      continue;
    }
    // Greedy longest match from the left; a piece after the first carries "##".
    std::vector<int64_t> pieces;
    size_t start = 0;
    bool unknown = false;
    while (start < word.size()) {
      size_t end = word.size();
      int64_t found = -1;
      for (; end > start; --end) {
        std::string piece = start > 0 ? "##" : "";
        for (size_t i = start; i < end; ++i) append_utf8(piece, word[i]);
        if (const auto it = vocab_.find(piece); it != vocab_.end()) {
          found = it->second;
          break;
        }
      }
      if (found < 0) {
        unknown = true;
        break;
      }
      pieces.push_back(found);
      start = end;
    }
    if (unknown)
      out.push_back(unk_);
    else
      out.insert(out.end(), pieces.begin(), pieces.end());
  }
}

std::vector<int64_t> BertTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> out = {cls_};
  // Special tokens written in the text are matched first, whole, as the tokenizers library does.
  size_t pos = 0;
  while (pos < text.size()) {
    size_t best = std::string_view::npos, best_len = 0;
    int64_t best_id = -1;
    for (const auto& [t, id] : special_) {
      const size_t at = text.find(t, pos);
      if (at != std::string_view::npos && (at < best || (at == best && t.size() > best_len))) {
        best = at;
        best_len = t.size();
        best_id = id;
      }
    }
    if (best == std::string_view::npos) {
      encode_words(text.substr(pos), out);
      break;
    }
    encode_words(text.substr(pos, best - pos), out);
    out.push_back(best_id);
    pos = best + best_len;
  }
  out.push_back(sep_);
  return out;
}

std::string BertTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string text;
  bool first = true;
  for (int64_t id : ids) {
    if (id < 0 || id >= static_cast<int64_t>(tokens_.size()) ||
        is_special_[static_cast<size_t>(id)] || tokens_[static_cast<size_t>(id)].empty())
      continue;
    std::string token = tokens_[static_cast<size_t>(id)];
    // The WordPiece decoder: "##" pieces join the word, others get a space; then each token's
    // space before . ? ! , goes, and before 's 've 're 'm n't.
    if (!first) token = token.starts_with("##") ? token.substr(2) : " " + token;
    first = false;
    for (const char* p : {" .", " ?", " !", " ,", " n't", " 'm", " 's", " 've", " 're"})
      if (token == p) token = token.substr(1);
    text += token;
  }
  return text;
}

BertTokenizer BertTokenizer::load(const fs::path& dir) {
  std::unordered_map<std::string, int64_t> vocab;
  std::vector<std::pair<std::string, int64_t>> special;
  bool lowercase = true;
  const fs::path tokenizer_json = dir / "tokenizer.json";
  if (fs::exists(tokenizer_json)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(io::read_file(tokenizer_json),
                                io::json_depth_limit(tokenizer_json.string()));
      if (j.at("model").value("type", "") != "WordPiece")
        throw Error("not a WordPiece tokenizer", tokenizer_json.string(), "model.type");
      for (const auto& [token, id] : j.at("model").at("vocab").items())
        vocab[token] = token_id(id, tokenizer_json);
      if (j.contains("normalizer") && j["normalizer"].is_object())
        lowercase = j["normalizer"].value("lowercase", true);
      if (j.contains("added_tokens") && j["added_tokens"].is_array())
        for (const auto& t : j["added_tokens"])
          if (t.value("special", false))
            special.emplace_back(t.at("content").get<std::string>(),
                                 token_id(t.at("id"), tokenizer_json));
    } catch (const nlohmann::json::exception& e) {
      throw Error(std::string("malformed tokenizer: ") + e.what(), tokenizer_json.string());
    }
  } else {
    const fs::path vocab_txt = dir / "vocab.txt";
    std::istringstream in(io::read_file(vocab_txt));
    int64_t id = 0;
    for (std::string line; std::getline(in, line); ++id) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      vocab[line] = id;  // a repeated line: the last id, as transformers reads vocab.txt
    }
    const fs::path added = dir / "added_tokens.json";
    if (fs::exists(added)) {
      try {
        const nlohmann::json tokens =
            nlohmann::json::parse(io::read_file(added), io::json_depth_limit(added.string()));
        if (!tokens.is_object()) throw Error("expected a JSON object", added.string());
        for (const auto& [token, tid] : tokens.items())
          special.emplace_back(token, token_id(tid, added));
      } catch (const nlohmann::json::exception& e) {
        throw Error(std::string("malformed: ") + e.what(), added.string());
      }
    }
  }
  try {
    return BertTokenizer(std::move(vocab), std::move(special), lowercase);
  } catch (const Error& e) {
    throw e.with_file(dir.string());
  }
}

}  // namespace sdtune::text
