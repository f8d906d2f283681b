#include "cli/toml_config.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <vector>

#include <toml++/toml.h>

#include "sdtune/error.h"

namespace sdtune::cli {
namespace {

// A TOML scalar as the text CLI11 would have received on the command line.
bool scalar_text(const toml::node& node, std::string& out) {
  if (auto s = node.value<std::string>(); s && node.is_string()) {
    out = *s;
  } else if (node.is_boolean()) {
    out = *node.value<bool>() ? "true" : "false";
  } else if (node.is_integer()) {
    out = std::to_string(*node.value<int64_t>());
  } else if (node.is_floating_point()) {
    const double d = *node.value<double>();
    if (d == std::trunc(d) && std::fabs(d) < 1e17) {
      out = std::to_string(static_cast<int64_t>(d));  // 1e4 as 10000, which integer options read
    } else {
      // The shortest text that reads back as the same double: 0.9, not 0.90000000000000002, so
      // that effective_config writes the value as the file gave it.
      char buf[32];
      out.assign(buf, std::to_chars(buf, buf + sizeof buf, d, std::chars_format::general).ptr);
    }
  } else {
    return false;
  }
  return true;
}

// The text apply_toml_config gives an option for `v` written bare, when TOML reads it as a
// number (`v` is a number to strtod, holding no quote, '#' or newline): "+6" reads back as "6",
// "1e-4" as "0.0001"; nullopt when TOML refuses it ("1.", ".5", "01", 2^64).
std::optional<std::string> toml_number_text(const std::string& v) {
  try {
    const toml::table table = toml::parse("v = " + v);
    std::string text;
    if ((table["v"].is_integer() || table["v"].is_floating_point()) &&
        scalar_text(*table.get("v"), text))
      return text;
  } catch (const toml::parse_error&) {
  }
  return std::nullopt;
}

bool is_numeric(const CLI::Option* opt) {
  const std::string type = opt->get_type_name();
  return type.find("INT") != std::string::npos || type.find("FLOAT") != std::string::npos;
}

bool is_flag(const CLI::Option* opt) {
  return opt->get_expected_min() == 0;
}

// The values of an option that was not given. CLI11 renders a list's default as "[a,b,c]" ("{}"
// when empty): it is split back into its items, or the file would give one item holding the
// brackets. (The rendering is ambiguous for items with commas; sdtune's list defaults have none.)
std::vector<std::string> default_values(const CLI::Option* opt) {
  const std::string& text = opt->get_default_str();
  if (text.empty()) return {};
  if (opt->get_items_expected_max() <= 1) return {text};
  if (text == "{}") return {};
  if (text.size() >= 2 && text.front() == '[' && text.back() == ']')
    return CLI::detail::split(text.substr(1, text.size() - 2), ',');
  return {text};
}

}  // namespace

void apply_toml_config(CLI::App* cmd, const std::filesystem::path& file) {
  toml::table table;
  try {
    table = toml::parse_file(file.string());
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    throw Error(
        "invalid TOML at line " + std::to_string(where.line) + ": " + std::string(e.description()),
        file.string());
  }
  for (const auto& [raw_key, node] : table) {
    std::string key(raw_key.str());
    std::replace(key.begin(), key.end(), '_', '-');
    CLI::Option* opt = cmd->get_option_no_throw("--" + key);
    if (!opt || key == "config")
      throw Error("unknown option (see sdtune " + cmd->get_name() + " --help)", file.string(),
                  std::string(raw_key.str()));
    if (opt->count() > 0) continue;  // the command line wins
    std::vector<std::string> values;
    std::string text;
    if (const toml::array* array = node.as_array()) {
      for (const auto& item : *array) {
        if (!scalar_text(item, text))
          throw Error("array items must be strings, numbers or booleans", file.string(),
                      std::string(raw_key.str()));
        values.push_back(text);
      }
    } else if (scalar_text(node, text)) {
      values.push_back(text);
    } else {
      throw Error("value must be a string, number, boolean or array", file.string(),
                  std::string(raw_key.str()));
    }
    if (values.empty()) continue;
    if (is_flag(opt) && values.size() == 1 && values[0] == "false") continue;
    try {
      for (const auto& v : values) opt->add_result(v);
      opt->run_callback();
    } catch (const CLI::Error& e) {
      throw Error(std::string("invalid value: ") + e.what(), file.string(),
                  std::string(raw_key.str()));
    }
  }
}

std::string effective_config(const CLI::App* cmd, const std::set<std::string>& skip) {
  // Written by hand rather than through toml++ so that options keep --help's order and numbers
  // keep the text they were given in (0.9, not 0.90000000000000002).
  auto quoted = [](const std::string& v) {
    std::string out = "\"";
    for (const char c : v) {
      const auto u = static_cast<unsigned char>(c);
      if (c == '"' || c == '\\') {
        out += '\\';
        out += c;
      } else if (u < 0x20 || u == 0x7f) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", u);
        out += buf;
      } else {
        out += c;
      }
    }
    return out + "\"";
  };
  // Numbers and booleans bare, everything else as a string, so that the file applies the same
  // text again. A number is bare only when TOML reads it back as one: strtod and CLI11 take "1.",
  // ".5", "01" and 2^64, which TOML refuses. TOML reads "+6" as 6: a numeric option is written
  // as TOML will read it (the same number), a text option keeps its text in quotes.
  auto literal = [&](const std::string& v, bool numeric) {
    char* end = nullptr;
    if (!v.empty()) {
      std::strtod(v.c_str(), &end);
      const bool special = v.find_first_of("xXnNiI") != std::string::npos;  // hex, nan, inf
      if (*end == '\0' && !special && v.find_first_not_of("0123456789+-.eE") == std::string::npos) {
        const std::optional<std::string> reread = toml_number_text(v);
        if (reread && (*reread == v || numeric)) return *reread;
      }
    }
    if (v == "true" || v == "false") return v;
    return quoted(v);
  };
  std::ostringstream s;
  for (const CLI::Option* opt : cmd->get_options()) {
    if (opt->get_lnames().empty()) continue;
    const std::string name = opt->get_lnames().front();
    if (skip.count(name) || name == "help" || name == "help-all" || name == "config") continue;
    if (is_flag(opt)) {
      s << name << " = " << (opt->count() > 0 && opt->as<bool>() ? "true" : "false") << "\n";
      continue;
    }
    std::vector<std::string> values = opt->results();
    if (values.empty()) values = default_values(opt);
    if (values.empty()) continue;
    if (opt->get_items_expected_max() > 1) {
      s << name << " = [";
      for (size_t i = 0; i < values.size(); ++i)
        s << (i ? ", " : "") << literal(values[i], is_numeric(opt));
      s << "]\n";
    } else {
      s << name << " = " << literal(values.back(), is_numeric(opt)) << "\n";
    }
  }
  return s.str();
}

}  // namespace sdtune::cli
