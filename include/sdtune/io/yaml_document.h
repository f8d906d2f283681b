#pragma once
// A YAML file read into JSON values (libyaml): the original LDM configs that A1111 keeps beside
// single-file checkpoints (v2-inference-v.yaml renamed to MODEL.yaml). Mappings become objects,
// sequences arrays; plain scalars that read as numbers, booleans or null become those, everything
// else strings. Anchors and aliases are refused (an alias can expand a small file without bound),
// as are files over 1 MiB and nesting deeper than kMaxJsonDepth.
#include <filesystem>

#include <nlohmann/json.hpp>

namespace sdtune::io {

// The first document of `path`; an Error naming the file (and the line) otherwise.
nlohmann::json read_yaml_file(const std::filesystem::path& path);
// The same from text; `source` names it in errors.
nlohmann::json parse_yaml(const std::string& text, const std::string& source);

}  // namespace sdtune::io
