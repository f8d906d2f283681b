#pragma once
// BERT's WordPiece tokenizer as BLIP uses it (transformers' BertTokenizer, backed by the
// tokenizers library): its normalizer (clean text, pad CJK ideographs, strip accents, lowercase),
// its pre-tokenizer (split on whitespace and punctuation), greedy longest-match WordPiece with
// "##" continuations, and the WordPiece decoder with its clean-up of spaces before punctuation.
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace sdtune::text {

class BertTokenizer {
 public:
  // From DIR/tokenizer.json (a WordPiece model with its added tokens), or else DIR/vocab.txt with
  // DIR/added_tokens.json. Errors name the file.
  static BertTokenizer load(const std::filesystem::path& dir);
  BertTokenizer(std::unordered_map<std::string, int64_t> vocab,
                std::vector<std::pair<std::string, int64_t>> special_tokens, bool lowercase = true);

  // [CLS] + the text's ids + [SEP]. Special tokens written in the text ("[DEC]") are kept whole.
  std::vector<int64_t> encode(std::string_view text) const;
  // The text of `ids`, special tokens left out.
  std::string decode(const std::vector<int64_t>& ids) const;

  int64_t id_of(const std::string& token) const;  // an Error for a token outside the vocabulary

 private:
  void encode_words(std::string_view text, std::vector<int64_t>& out) const;

  std::unordered_map<std::string, int64_t> vocab_;
  std::vector<std::string> tokens_;  // by id
  std::vector<std::pair<std::string, int64_t>> special_;
  std::vector<bool> is_special_;  // by id
  bool lowercase_ = true;
  int64_t unk_ = 0, cls_ = 0, sep_ = 0;
};

}  // namespace sdtune::text
