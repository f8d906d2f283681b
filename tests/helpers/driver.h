// The one way the test and benchmark drivers (tests/**/*.cpp run by the Python tests, bench/*.cpp)
// parse their flags: with CLI11, as the sdtune CLI parses its own (src/cli/), rather than each
// driver hand-rolling an argv loop. Required flags, unknown options, --help and errors then behave
// the same in every driver.
#pragma once

#include <exception>
#include <functional>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

namespace sdtune::driver {

// Registers the driver's options (add_options, which binds them to the caller's variables),
// parses argv and runs body. Returns the exit status: CLI11's for --help or a parse error (which
// it prints), 1 after "error: <what>" on stderr for an exception, 0 otherwise.
inline int run_driver(int argc, char** argv, const std::string& description,
                      const std::function<void(CLI::App&)>& add_options,
                      const std::function<void()>& body) {
  CLI::App app{description};
  add_options(app);
  try {
    app.parse(argc, argv);
    body();
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace sdtune::driver
