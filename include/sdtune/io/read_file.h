#pragma once
// A whole (small) file as a string: configs, tokenizer files, captions, metadata.jsonl.
#include <cstdint>
#include <filesystem>
#include <string>

namespace sdtune::io {

// The file's bytes. An Error naming it when it is missing or unreadable ("cannot open file
// (missing or unreadable)") or larger than `max_bytes`, checked before anything is read: a file
// from the internet cannot make us hold more than that.
std::string read_file(const std::filesystem::path& path,
                      std::uintmax_t max_bytes = std::uintmax_t{1} << 30);

}  // namespace sdtune::io
