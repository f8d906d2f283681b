#include <csignal>
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "cli/crash_report.h"
#include "cli/number_checks.h"
#include "sdtune/error.h"

int main(int argc, char** argv) {
  sdtune::cli::install_crash_report();
  // Past a file-size limit (ulimit -f) a write then fails with EFBIG, reported and cleaned up as a
  // full disk is, instead of SIGXFSZ killing the process in the middle of a save.
  std::signal(SIGXFSZ, SIG_IGN);
  CLI::App app{"sdtune: fine-tune Stable Diffusion and generate images with it"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every command");
  sdtune::cli::add_inspect(app);
  sdtune::cli::add_tokenize(app);
  sdtune::cli::add_forward(app);
  sdtune::cli::add_generate(app);
  sdtune::cli::add_grid(app);
  sdtune::cli::add_train(app);
  sdtune::cli::add_dreambooth(app);
  sdtune::cli::add_train_vae(app);
  sdtune::cli::add_init(app);
  sdtune::cli::add_lora(app);
  sdtune::cli::add_convert(app);
  sdtune::cli::add_caption(app);
  sdtune::cli::add_serve(app);
  sdtune::cli::checks::check_every_number(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line and exit code 1, as every other error: the flag and what is wrong with its value.
    std::fprintf(stderr, "sdtune: error: %s (see sdtune %s --help)\n", e.what(),
                 app.get_subcommands().empty() ? "" : app.get_subcommands()[0]->get_name().c_str());
    return 1;
  } catch (const sdtune::Error& e) {
    std::fprintf(stderr, "sdtune: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    // LibTorch errors carry a multi-line backtrace; the first line says what went wrong.
    std::string what = e.what();
    std::fprintf(stderr, "sdtune: error: %s\n", what.substr(0, what.find('\n')).c_str());
    return 1;
  }
  return 0;
}
