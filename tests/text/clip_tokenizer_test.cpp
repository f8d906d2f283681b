#include "sdtune/text/clip_tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "sdtune/error.h"

namespace sdtune::text {
namespace {

using Vocab = std::unordered_map<std::string, int64_t>;
using Merges = std::vector<std::pair<std::string, std::string>>;

// GPT-2's byte -> printable character map, written independently of the implementation so the
// test vocab is laid out like CLIP's: printable Latin-1 bytes stand for themselves, the rest map
// to U+0100 upwards in byte order.
std::string byte_char(int byte) {
  auto printable = [](int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  };
  int cp = byte;
  if (!printable(byte)) {
    cp = 256;
    for (int b = 0; b < byte; ++b) cp += printable(b) ? 0 : 1;
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

// 256 byte characters, the same with "</w>", the merge results, then the two special tokens:
// CLIP's order on a small scale.
class TinyVocab {
 public:
  explicit TinyVocab(const Merges& merges) {
    for (int b = 0; b < 256; ++b) add(byte_char(b));
    for (int b = 0; b < 256; ++b) add(byte_char(b) + "</w>");
    for (const auto& [left, right] : merges) add(left + right);
    add("<|startoftext|>");
    add("<|endoftext|>");
  }
  int64_t id(const std::string& token) const { return vocab_.at(token); }
  const Vocab& vocab() const { return vocab_; }

 private:
  void add(const std::string& token) { vocab_.emplace(token, static_cast<int64_t>(vocab_.size())); }
  Vocab vocab_;
};

const Merges kMerges = {
    {"l", "o"}, {"e", "r</w>"}, {"lo", "w"}, {"low", "er</w>"}, {"o", "w</w>"}, {"lo", "w</w>"},
};

class ClipTokenizerTest : public ::testing::Test {
 protected:
  ClipTokenizerTest() : vocab_(kMerges), tokenizer_(vocab_.vocab(), kMerges) {}
  int64_t id(const std::string& token) const { return vocab_.id(token); }

  TinyVocab vocab_;
  ClipTokenizer tokenizer_;
};

TEST_F(ClipTokenizerTest, MergesByRankAndMarksTheEndOfWord) {
  EXPECT_EQ(tokenizer_.encode("lower"), std::vector<int64_t>{id("lower</w>")});
  // "l o" (rank 0) wins over "o w</w>" (rank 4), then "lo w</w>" applies.
  EXPECT_EQ(tokenizer_.encode("low"), std::vector<int64_t>{id("low</w>")});
  // Only the last symbol of a word carries "</w>": "lo w" does not apply at the end.
  EXPECT_EQ(tokenizer_.encode("ow"), std::vector<int64_t>{id("ow</w>")});
  EXPECT_EQ(tokenizer_.encode("lol"), (std::vector<int64_t>{id("lo"), id("l</w>")}));
  EXPECT_EQ(tokenizer_.encode("lowly"), (std::vector<int64_t>{id("low"), id("l"), id("y</w>")}));
}

TEST_F(ClipTokenizerTest, RankOrderDecidesBetweenOverlappingPairs) {
  // Same pairs, opposite priority: "o w</w>" now comes first and "l o" can no longer apply.
  const Merges reversed = {{"o", "w</w>"}, {"l", "o"}};
  const TinyVocab vocab(reversed);
  const ClipTokenizer tokenizer(vocab.vocab(), reversed);
  EXPECT_EQ(tokenizer.encode("low"), (std::vector<int64_t>{vocab.id("l"), vocab.id("ow</w>")}));
}

TEST_F(ClipTokenizerTest, SplitsWordsPunctuationDigitsAndContractions) {
  EXPECT_EQ(tokenizer_.encode("  LOW,\tlower!!\n7"),
            (std::vector<int64_t>{id("low</w>"), id(",</w>"), id("lower</w>"), id("!"), id("!</w>"),
                                  id("7</w>")}));
  // Digits are split one by one; "'s" is a piece of its own.
  EXPECT_EQ(tokenizer_.encode("42"), (std::vector<int64_t>{id("4</w>"), id("2</w>")}));
  // "l o" is not "l o</w>": a word-final "o" does not merge.
  EXPECT_EQ(tokenizer_.encode("lo's"),
            (std::vector<int64_t>{id("l"), id("o</w>"), id("'"), id("s</w>")}));
  EXPECT_TRUE(tokenizer_.encode(" \t\n ").empty());
}

TEST_F(ClipTokenizerTest, NormalizesNfcAndLowercasesPerCharacter) {
  EXPECT_EQ(tokenizer_.encode("e\xCC\x81"), tokenizer_.encode("\xC3\xA9"));  // e + U+0301 = é
  // U+0130 lowercases to "i" + U+0307; the mark is not a letter, so it is a piece of its own.
  EXPECT_EQ(tokenizer_.encode("\xC4\xB0"),
            (std::vector<int64_t>{id("i</w>"), id(byte_char(0xCC)), id(byte_char(0x87) + "</w>")}));
  // No final-sigma rule: "ΣΑΣ" becomes "σασ".
  EXPECT_EQ(tokenizer_.encode("\xCE\xA3\xCE\x91\xCE\xA3"),
            tokenizer_.encode("\xCF\x83\xCE\xB1\xCF\x83"));
  // Multi-byte characters are BPE'd byte by byte: "é" is C3 A9.
  EXPECT_EQ(tokenizer_.encode("CAF\xC3\x89"),
            (std::vector<int64_t>{id("c"), id("a"), id("f"), id(byte_char(0xC3)),
                                  id(byte_char(0xA9) + "</w>")}));
}

TEST_F(ClipTokenizerTest, SpecialTokensAreMatchedExactlyInTheRawText) {
  EXPECT_EQ(tokenizer_.encode("low<|endoftext|>LOW<|startoftext|>"),
            (std::vector<int64_t>{id("low</w>"), tokenizer_.eos_id(), id("low</w>"),
                                  tokenizer_.bos_id()}));
  // Another case is ordinary text: lowercased and split as "<|", "endoftext", "|>".
  const std::vector<int64_t> upper = tokenizer_.encode("<|ENDOFTEXT|>");
  EXPECT_EQ(upper.size(), std::string("<|endoftext|>").size());
  EXPECT_EQ(upper[1], id("|</w>"));
}

TEST_F(ClipTokenizerTest, UnknownSymbolsBecomeTheEndToken) {
  Vocab vocab = vocab_.vocab();
  vocab.erase(byte_char('z') + "</w>");
  const ClipTokenizer tokenizer(vocab, kMerges);
  EXPECT_EQ(tokenizer.encode("lz"), (std::vector<int64_t>{id("l"), tokenizer.eos_id()}));
}

TEST_F(ClipTokenizerTest, PadsToMaxLength) {
  const ClipTokenizer tokenizer(vocab_.vocab(), kMerges, "<|endoftext|>", 6);
  bool truncated = true;
  EXPECT_EQ(tokenizer.encode_padded("low lower", &truncated),
            (std::vector<int64_t>{tokenizer.bos_id(), id("low</w>"), id("lower</w>"),
                                  tokenizer.eos_id(), tokenizer.eos_id(), tokenizer.eos_id()}));
  EXPECT_FALSE(truncated);
  EXPECT_EQ(tokenizer.encode_padded("").size(), 6u);
}

TEST_F(ClipTokenizerTest, TruncationKeepsTheEndToken) {
  const ClipTokenizer tokenizer(vocab_.vocab(), kMerges, "!", 5);
  bool truncated = false;
  const std::vector<int64_t> ids = tokenizer.encode_padded("low lower lol low", &truncated);
  EXPECT_EQ(ids, (std::vector<int64_t>{tokenizer.bos_id(), id("low</w>"), id("lower</w>"), id("lo"),
                                       tokenizer.eos_id()}));
  EXPECT_TRUE(truncated);
  // Exactly max_length - 2 ids is no truncation.
  EXPECT_EQ(tokenizer.encode_padded("low lower lower", &truncated).back(), tokenizer.eos_id());
  EXPECT_FALSE(truncated);
}

TEST_F(ClipTokenizerTest, PadTokenIsSplitOutAsASpecialToken) {
  // With SD 2.x's pad "!", transformers matches every "!" before normalization.
  const ClipTokenizer tokenizer(vocab_.vocab(), kMerges, "!", 8);
  EXPECT_EQ(tokenizer.pad_id(), id("!"));
  EXPECT_EQ(tokenizer.encode("low!!"), (std::vector<int64_t>{id("low</w>"), id("!"), id("!")}));
  EXPECT_EQ(tokenizer.encode_padded("low").back(), id("!"));
}

// ---- load() ------------------------------------------------------------------------------------

class ClipTokenizerLoadTest : public ::testing::Test {
 protected:
  ClipTokenizerLoadTest() : vocab_(kMerges) {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "clip_tokenizer_test.XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) std::abort();
    dir_ = pattern;
    std::string vocab_json = "{";
    for (const auto& [token, id] : vocab_.vocab()) {
      std::string escaped;
      for (char c : token) {
        if (c == '"' || c == '\\') escaped += '\\';
        escaped += c;
      }
      vocab_json += (vocab_json.size() > 1 ? ",\"" : "\"") + escaped + "\":" + std::to_string(id);
    }
    write("vocab.json", vocab_json + "}");
    std::string merges = "#version: 0.2\n";
    for (const auto& [left, right] : kMerges) merges += left + " " + right + "\n\n";
    write("merges.txt", merges);
  }
  ~ClipTokenizerLoadTest() override { std::filesystem::remove_all(dir_); }

  void write(const std::string& name, const std::string& content) {
    std::ofstream(dir_ / name, std::ios::binary) << content;
  }
  // Runs load() expecting an Error; returns it.
  Error load_error() {
    try {
      ClipTokenizer::load(dir_);
    } catch (const Error& e) {
      return e;
    }
    ADD_FAILURE() << "load() did not throw";
    return Error("");
  }
  int64_t id(const std::string& token) const { return vocab_.id(token); }

  TinyVocab vocab_;
  std::filesystem::path dir_;
};

TEST_F(ClipTokenizerLoadTest, LoadsVocabAndMergesWithDefaults) {
  const ClipTokenizer tokenizer = ClipTokenizer::load(dir_);
  EXPECT_EQ(tokenizer.vocab_size(), vocab_.vocab().size());
  EXPECT_EQ(tokenizer.bos_id(), id("<|startoftext|>"));
  EXPECT_EQ(tokenizer.eos_id(), id("<|endoftext|>"));
  EXPECT_EQ(tokenizer.pad_id(), id("<|endoftext|>"));
  EXPECT_EQ(tokenizer.max_length(), 77);
  EXPECT_EQ(tokenizer.encode("lower"), std::vector<int64_t>{id("lower</w>")});
}

TEST_F(ClipTokenizerLoadTest, ReadsPadTokenAndMaxLengthFromConfig) {
  write("tokenizer_config.json",
        R"({"pad_token": {"content": "!", "__type": "AddedToken"}, "model_max_length": 16})");
  ClipTokenizer tokenizer = ClipTokenizer::load(dir_);
  EXPECT_EQ(tokenizer.pad_id(), id("!"));
  EXPECT_EQ(tokenizer.max_length(), 16);
  EXPECT_EQ(tokenizer.encode_padded("low").size(), 16u);

  // special_tokens_map.json wins over the config, as in transformers' legacy loading.
  write("special_tokens_map.json", R"({"pad_token": "<|endoftext|>"})");
  EXPECT_EQ(ClipTokenizer::load(dir_).pad_id(), id("<|endoftext|>"));

  // transformers' "no limit" sentinel falls back to CLIP's 77.
  write("tokenizer_config.json", R"({"model_max_length": 1000000000000000019884624838656})");
  EXPECT_EQ(ClipTokenizer::load(dir_).max_length(), 77);
}

TEST_F(ClipTokenizerLoadTest, MissingVocabNamesTheFile) {
  std::filesystem::remove(dir_ / "vocab.json");
  const Error e = load_error();
  EXPECT_EQ(e.file(), (dir_ / "vocab.json").string());
}

TEST_F(ClipTokenizerLoadTest, MalformedVocabNamesTheFile) {
  write("vocab.json", R"({"a": 0, "b": )");
  EXPECT_EQ(load_error().file(), (dir_ / "vocab.json").string());
  write("vocab.json", R"({"a": "zero"})");
  const Error e = load_error();
  EXPECT_EQ(e.file(), (dir_ / "vocab.json").string());
  EXPECT_EQ(e.key(), "a");
}

TEST_F(ClipTokenizerLoadTest, MissingMergesNamesTheFile) {
  std::filesystem::remove(dir_ / "merges.txt");
  EXPECT_EQ(load_error().file(), (dir_ / "merges.txt").string());
}

TEST_F(ClipTokenizerLoadTest, BadMergeLineNamesTheFileAndLine) {
  write("merges.txt", "#version: 0.2\nl o\nl o w\n");
  const Error e = load_error();
  EXPECT_EQ(e.file(), (dir_ / "merges.txt").string());
  EXPECT_NE(e.message().find("line 3"), std::string::npos) << e.what();
}

TEST_F(ClipTokenizerLoadTest, MergeOutsideTheVocabNamesTheMergesFile) {
  write("merges.txt", "#version: 0.2\nl o\nq q\n");  // "qq" is not in the vocab.
  const Error e = load_error();
  EXPECT_EQ(e.file(), (dir_ / "merges.txt").string());
  EXPECT_NE(e.message().find("qq"), std::string::npos) << e.what();
}

TEST_F(ClipTokenizerLoadTest, PadTokenOutsideTheVocabNamesItsFile) {
  write("tokenizer_config.json", R"({"pad_token": "<pad>"})");
  Error e = load_error();
  EXPECT_EQ(e.file(), (dir_ / "tokenizer_config.json").string());
  EXPECT_EQ(e.key(), "pad_token");

  write("special_tokens_map.json", R"({"pad_token": {"content": "<|pad|>"}})");
  e = load_error();
  EXPECT_EQ(e.file(), (dir_ / "special_tokens_map.json").string());
  EXPECT_NE(e.message().find("<|pad|>"), std::string::npos) << e.what();
}

TEST_F(ClipTokenizerLoadTest, MalformedConfigNamesTheFile) {
  write("tokenizer_config.json", R"({"pad_token": 3})");
  Error e = load_error();
  EXPECT_EQ(e.file(), (dir_ / "tokenizer_config.json").string());
  EXPECT_EQ(e.key(), "pad_token");
  write("tokenizer_config.json", "not json");
  EXPECT_EQ(load_error().file(), (dir_ / "tokenizer_config.json").string());
}

TEST(ClipTokenizerErrors, InvalidUtf8IsAnError) {
  const TinyVocab vocab(kMerges);
  const ClipTokenizer tokenizer(vocab.vocab(), kMerges);
  EXPECT_THROW(tokenizer.encode("ab\xFF"), Error);
}

}  // namespace
}  // namespace sdtune::text
