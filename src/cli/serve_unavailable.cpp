// Built instead of serve.cpp with -DSDTUNE_SERVE=OFF (a machine without cpp-httplib, such as the
// lent GPU machine of bench/gpu_check.sh): the command exists and says why it cannot run.
#include "cli/commands.h"
#include "sdtune/error.h"

namespace sdtune::cli {

void add_serve(CLI::App& app) {
  auto* cmd = app.add_subcommand("serve", "A web page and AUTOMATIC1111's HTTP API (not built)");
  cmd->allow_extras();
  cmd->callback([] {
    throw Error("this sdtune was built without `serve` (-DSDTUNE_SERVE=OFF: no cpp-httplib)");
  });
}

}  // namespace sdtune::cli
