// sdtune tokenize --model DIR: prompts on stdin (one per line) -> 77 token ids per line as JSON.
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "sdtune/error.h"
#include "sdtune/io/model_folder.h"
#include "sdtune/text/clip_tokenizer.h"

namespace sdtune::cli {

void add_tokenize(CLI::App& app) {
  struct Args {
    std::string model;
    bool json_lines = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "tokenize", "Print the CLIP token ids of prompts read from stdin, one per line");
  cmd->add_option("--model", args->model, "Pipeline folder (its tokenizer/ is used)")->required();
  cmd->add_flag("--json-lines", args->json_lines,
                "Each input line is a JSON string literal (so prompts can hold newlines)");
  cmd->callback([args] {
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
