#include "sdtune/io/yaml_document.h"

#include <yaml.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <vector>

#include "sdtune/error.h"
#include "sdtune/io/json_config.h"
#include "sdtune/io/read_file.h"

namespace sdtune::io {
namespace {

using json = nlohmann::json;
constexpr std::uintmax_t kMaxYamlBytes = 1 << 20;

// YAML 1.1's plain scalars as JSON: numbers, booleans and null by their usual spellings.
json scalar(const yaml_event_t& e) {
  const std::string text(reinterpret_cast<const char*>(e.data.scalar.value), e.data.scalar.length);
  if (e.data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return text;
  if (text.empty() || text == "~" || text == "null" || text == "Null" || text == "NULL")
    return nullptr;
  if (text == "true" || text == "True" || text == "TRUE") return true;
  if (text == "false" || text == "False" || text == "FALSE") return false;
  const char* begin = text.c_str();
  char* end = nullptr;
  errno = 0;
  const long long i = std::strtoll(begin, &end, 10);
  if (errno == 0 && end == begin + text.size()) return i;
  errno = 0;
  const double d = std::strtod(begin, &end);
  if (errno == 0 && end == begin + text.size() &&
      text.find_first_of("0123456789") != std::string::npos &&
      text.find_first_of("xXpP") == std::string::npos)
    return d;
  return text;
}

class Parser {
 public:
  Parser(const std::string& text, std::string source) : source_(std::move(source)) {
    if (!yaml_parser_initialize(&parser_)) throw Error("cannot start the YAML parser", source_);
    yaml_parser_set_input_string(&parser_, reinterpret_cast<const unsigned char*>(text.data()),
                                 text.size());
  }
  ~Parser() { yaml_parser_delete(&parser_); }
  Parser(const Parser&) = delete;
  Parser& operator=(const Parser&) = delete;

  json document() {
    // Stream start, document start, the root node.
    for (;;) {
      Event e = next();
      if (e.get().type == YAML_STREAM_END_EVENT) return nullptr;  // an empty file
      if (e.get().type == YAML_DOCUMENT_START_EVENT) break;
    }
    Event root = next();
    return node(root, 0);
  }

 private:
  // One event, freed when it goes out of scope.
  class Event {
   public:
    Event() = default;
    ~Event() {
      if (live_) yaml_event_delete(&event_);
    }
    Event(Event&& o) noexcept : event_(o.event_), live_(o.live_) { o.live_ = false; }
    Event(const Event&) = delete;
    Event& operator=(const Event&) = delete;
    yaml_event_t& get() { return event_; }
    void set_live() { live_ = true; }

   private:
    yaml_event_t event_{};
    bool live_ = false;
  };

  Event next() {
    Event e;
    if (!yaml_parser_parse(&parser_, &e.get()))
      throw Error(std::string("invalid YAML: ") + (parser_.problem ? parser_.problem : "?") +
                      " at line " + std::to_string(parser_.problem_mark.line + 1),
                  source_);
    e.set_live();
    return e;
  }

  json node(Event& e, int depth) {
    if (depth > kMaxJsonDepth) throw Error("YAML nested too deeply", source_);
    switch (e.get().type) {
      case YAML_SCALAR_EVENT:
        refuse_anchor(e.get().data.scalar.anchor, e);
        return scalar(e.get());
      case YAML_ALIAS_EVENT:
        throw Error(
            "YAML aliases are not read (line " + std::to_string(e.get().start_mark.line + 1) + ")",
            source_);
      case YAML_SEQUENCE_START_EVENT: {
        refuse_anchor(e.get().data.sequence_start.anchor, e);
        json out = json::array();
        for (;;) {
          Event item = next();
          if (item.get().type == YAML_SEQUENCE_END_EVENT) return out;
          out.push_back(node(item, depth + 1));
        }
      }
      case YAML_MAPPING_START_EVENT: {
        refuse_anchor(e.get().data.mapping_start.anchor, e);
        json out = json::object();
        for (;;) {
          Event key = next();
          if (key.get().type == YAML_MAPPING_END_EVENT) return out;
          const json k = node(key, depth + 1);
          Event value = next();
          out[k.is_string() ? k.get<std::string>() : k.dump()] = node(value, depth + 1);
        }
      }
      default:
        throw Error(
            "unexpected YAML structure at line " + std::to_string(e.get().start_mark.line + 1),
            source_);
    }
  }

  void refuse_anchor(const yaml_char_t* anchor, Event& e) const {
    if (anchor)
      throw Error(
          "YAML anchors are not read (line " + std::to_string(e.get().start_mark.line + 1) + ")",
          source_);
  }

  yaml_parser_t parser_{};
  std::string source_;
};

}  // namespace

json parse_yaml(const std::string& text, const std::string& source) {
  if (text.size() > kMaxYamlBytes) throw Error("YAML file larger than 1 MiB", source);
  Parser parser(text, source);
  return parser.document();
}

json read_yaml_file(const std::filesystem::path& path) {
  return parse_yaml(read_file(path, kMaxYamlBytes), path.string());
}

}  // namespace sdtune::io
