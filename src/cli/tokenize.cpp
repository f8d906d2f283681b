// sdtune tokenize --model DIR: prompts on stdin (one per line) -> 77 token ids per line as JSON.
// --wordpiece DIR: BLIP's BERT tokenizer instead (ids of [CLS] text [SEP]); with --decode, lines
// of JSON id arrays -> their text, special tokens left out.
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "sdtune/error.h"
#include "sdtune/io/model_folder.h"
#include "sdtune/text/bert_tokenizer.h"
#include "sdtune/text/clip_tokenizer.h"

namespace sdtune::cli {
namespace {

// One prompt (a JSON string) or, decoding, one JSON array of ids per line of stdin.
void wordpiece_lines(const std::string& dir, bool decode) {
  const auto tokenizer = text::BertTokenizer::load(dir);
  std::string line;
  for (int64_t line_no = 1; std::getline(std::cin, line); ++line_no) {
    const auto parsed = nlohmann::json::parse(line, nullptr, false);
    if (decode ? !parsed.is_array() : !parsed.is_string())
      throw Error("line " + std::to_string(line_no) + " is not a JSON " +
                      (decode ? "array of ids" : "string"),
                  "<stdin>");
    if (decode)
      std::cout << nlohmann::json(tokenizer.decode(parsed.get<std::vector<int64_t>>())).dump()
                << '\n';
    else
      std::cout << nlohmann::json(tokenizer.encode(parsed.get<std::string>())).dump() << '\n';
  }
}

}  // namespace

void add_tokenize(CLI::App& app) {
  struct Args {
    std::string model, wordpiece;
    bool json_lines = false, decode = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "tokenize", "Print the CLIP token ids of prompts read from stdin, one per line");
  auto* model = cmd->add_option("--model", args->model, "Pipeline folder (its tokenizer/ is used)");
  auto* wordpiece = cmd->add_option("--wordpiece", args->wordpiece,
                                    "BLIP/BERT tokenizer folder (tokenizer.json or vocab.txt)");
  model->excludes(wordpiece);
  cmd->add_flag("--decode", args->decode, "--wordpiece: lines of JSON id arrays to text");
  cmd->add_flag("--json-lines", args->json_lines,
                "Each input line is a JSON string literal (so prompts can hold newlines)");
  cmd->callback([args] {
    if (!args->wordpiece.empty()) return wordpiece_lines(args->wordpiece, args->decode);
    if (args->model.empty()) throw Error("--model or --wordpiece is required");
    std::filesystem::path dir = std::filesystem::path(args->model) / "tokenizer";
    if (!std::filesystem::is_directory(args->model))
      throw Error("model folder not found", args->model);
    auto tokenizer = text::ClipTokenizer::load(dir);
    std::string line;
    int64_t line_no = 0;
    while (std::getline(std::cin, line)) {
      ++line_no;
      std::string prompt = line;
      if (args->json_lines) {
        auto parsed = nlohmann::json::parse(line, nullptr, false);
        if (!parsed.is_string())
          throw Error("line " + std::to_string(line_no) + " is not a JSON string", "<stdin>");
        prompt = parsed.get<std::string>();
      }
      bool truncated = false;
      auto ids = tokenizer.encode_padded(prompt, &truncated);
      if (truncated)
        std::cerr << "sdtune: warning: line " << line_no << ": prompt is longer than "
                  << tokenizer.max_length() << " tokens and was truncated\n";
      std::cout << nlohmann::json(ids).dump() << '\n';
    }
  });
}

}  // namespace sdtune::cli
