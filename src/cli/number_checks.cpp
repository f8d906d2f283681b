#include "cli/number_checks.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace sdtune::cli::checks {
namespace {

std::string str(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

// A validator from a predicate on the value and the text that says what is wanted.
template <typename Accepts>
CLI::Validator number_check(const std::string& wanted, Accepts accepts) {
  return CLI::Validator(
      [wanted, accepts](std::string& text) -> std::string {
        char* end = nullptr;
        errno = 0;
        const double v = std::strtod(text.c_str(), &end);
        if (end == text.c_str() || *end != '\0') return "expected a number, got '" + text + "'";
        if (!std::isfinite(v) || errno == ERANGE) return "must be a finite number, got " + text;
        if (!accepts(v)) return "must be " + wanted + ", got " + text;
        return {};
      },
      "");
}

}  // namespace

CLI::Validator finite() {
  return number_check("finite", [](double) { return true; });
}

CLI::Validator positive() {
  return number_check("positive", [](double v) { return v > 0; });
}

CLI::Validator non_negative() {
  return number_check(">= 0", [](double v) { return v >= 0; });
}

CLI::Validator at_least(double minimum) {
  return number_check("at least " + str(minimum), [minimum](double v) { return v >= minimum; });
}

CLI::Validator at_most(double maximum) {
  return number_check("at most " + str(maximum), [maximum](double v) { return v <= maximum; });
}

CLI::Validator in_range(double low, double high) {
  return number_check("in [" + str(low) + ", " + str(high) + "]",
                      [low, high](double v) { return v >= low && v <= high; });
}

CLI::Validator below_one() {
  return number_check("in [0, 1)", [](double v) { return v >= 0 && v < 1; });
}

void check_every_number(CLI::App& app) {
  for (CLI::Option* opt : app.get_options()) {
    const std::string type = opt->get_type_name();
    if (type == "FLOAT") opt->check(finite());
    if (type == "UINT") opt->check(non_negative());
  }
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; }))
    check_every_number(*sub);
}

}  // namespace sdtune::cli::checks
