#pragma once
// CLIP's byte-level BPE tokenizer, giving exactly the ids of transformers' CLIPTokenizer.
// Text pipeline (transformers 5 / tokenizers): special tokens are split out of the raw text first;
// the rest is NFC-normalized, every run of whitespace becomes one space, lowercased; split with
// CLIP's pattern; each piece is mapped byte-wise to GPT-2's printable unicode alphabet and
// BPE-merged with "</w>" marking the end of a word.
#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sdtune::io {
class ModelFolder;
}

namespace sdtune::text {

class ClipTokenizer {
 public:
  // Reads vocab.json and merges.txt from `dir`, and the pad token and model_max_length from
  // tokenizer_config.json / special_tokens_map.json when present (SD 1.x pads with
  // "<|endoftext|>", SD 2.x with "!"). Throws sdtune::Error naming the file on a missing or
  // malformed file.
  static ClipTokenizer load(const std::filesystem::path& dir);
  // The tokenizer/ component of a pipeline folder.
  static ClipTokenizer from_pipeline(const io::ModelFolder& folder);

  // `merges` in rank order (first = highest priority).
  ClipTokenizer(std::unordered_map<std::string, int64_t> vocab,
                std::vector<std::pair<std::string, std::string>> merges,
                std::string pad_token = "<|endoftext|>", int64_t max_length = 77);

  // Token ids of `text` with no start/end tokens, no truncation.
  std::vector<int64_t> encode(std::string_view text) const;

  // [<|startoftext|>, ids..., <|endoftext|>] truncated to max_length() (the end token is kept)
  // and padded with pad_id() to exactly max_length(): what diffusers feeds the text encoder
  // (padding="max_length", truncation=True). `truncated` (optional) tells whether ids were cut.
  std::vector<int64_t> encode_padded(std::string_view text, bool* truncated = nullptr) const;

  int64_t bos_id() const { return bos_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t pad_id() const { return pad_id_; }
  int64_t max_length() const { return max_length_; }
  std::size_t vocab_size() const { return vocab_.size(); }

 private:
  // Appends the ids of a stretch of text that holds no special token.
  void encode_segment(std::string_view text, std::vector<int64_t>& ids) const;
  // Appends the BPE ids of one pre-tokenized piece (raw bytes, before the byte-level mapping).
  void bpe(std::string_view piece, std::vector<int64_t>& ids) const;

  std::unordered_map<std::string, int64_t> vocab_;
  // Key: left id << 32 | right id; value: (rank, merged id). Same shape as tokenizers' merge map,
  // so stale heap entries are detected the same way.
  std::unordered_map<uint64_t, std::pair<int64_t, int64_t>> merges_;
  // Id of each byte's printable character, alone and with "</w>" (-1 when not in the vocab).
  std::array<int64_t, 256> byte_ids_{}, byte_end_ids_{};
  // Matched exactly in the raw text before normalization (bos, eos = unk, pad), as transformers
  // registers them as special added tokens: with SD 2.x's pad "!" every "!" becomes id 0.
  std::vector<std::pair<std::string, int64_t>> special_tokens_;
  int64_t bos_id_ = 0, eos_id_ = 0, pad_id_ = 0, max_length_ = 77;
};

}  // namespace sdtune::text
