#include "sdtune/distributed/launch_environment.h"

#include <charconv>
#include <cstdlib>
#include <optional>

#include "sdtune/error.h"

namespace sdtune::distributed {
namespace {

using Getenv = std::function<const char*(const char*)>;

// The variable as an integer, nullopt when unset or empty.
std::optional<int64_t> integer(const Getenv& getenv, const char* name) {
  const char* text = getenv(name);
  if (text == nullptr || *text == '\0') return std::nullopt;
  const std::string s(text);
  int64_t value = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size())
    throw Error("environment variable " + std::string(name) + "=" + s + " is not an integer");
  return value;
}

std::string text(const Getenv& getenv, const char* name) {
  const char* t = getenv(name);
  return t == nullptr ? "" : t;
}

// The launcher's variable names for one process's place in the run.
struct Names {
  const char* launcher;
  const char *rank, *world_size, *local_rank, *local_world_size;
};

constexpr Names kTorchrun{"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"};
constexpr Names kMpirun{"mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                        "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"};
// SLURM_STEP_NUM_TASKS is set inside an srun job step only; a batch script's own shell (one
// process, whatever --ntasks says) has SLURM_NTASKS but is not a rank.
constexpr Names kSrun{"srun", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", nullptr};

}  // namespace

LaunchEnvironment launch_environment(const Getenv& getenv) {
  LaunchEnvironment env;
  for (const Names& n : {kTorchrun, kMpirun, kSrun}) {
    const auto world = integer(getenv, n.world_size);
    const auto rank = integer(getenv, n.rank);
    if (!world || !rank) continue;
    env.launcher = n.launcher;
    env.world_size = *world;
    env.rank = *rank;
    if (env.world_size < 1)
      throw Error(std::string(n.world_size) + "=" + std::to_string(env.world_size) +
                  ": the world size must be at least 1");
    if (env.rank < 0 || env.rank >= env.world_size)
      throw Error(std::string(n.rank) + "=" + std::to_string(env.rank) + " is not a rank of " +
                  n.world_size + "=" + std::to_string(env.world_size));
    env.local_rank = integer(getenv, n.local_rank).value_or(env.rank);
    env.local_world_size = (n.local_world_size ? integer(getenv, n.local_world_size) : std::nullopt)
                               .value_or(env.world_size);
    if (env.local_world_size < 1 || env.local_world_size > env.world_size || env.local_rank < 0 ||
        env.local_rank >= env.local_world_size)
      throw Error(std::string(n.local_rank) + "=" + std::to_string(env.local_rank) +
                  " is not a local rank of " + std::to_string(env.local_world_size) +
                  " processes on this machine (" + n.world_size + "=" +
                  std::to_string(env.world_size) + ")");
    break;
  }
  std::string addr = text(getenv, "MASTER_ADDR");
  if (addr.empty() && env.launcher == "srun") addr = text(getenv, "SLURM_LAUNCH_NODE_IPADDR");
  if (!addr.empty())
    env.master_addr = addr;
  else if (env.local_world_size < env.world_size)
    throw Error("the " + std::to_string(env.world_size) + " ranks of this " + env.launcher +
                " run span several machines: set MASTER_ADDR to rank 0's address");
  if (const auto port = integer(getenv, "MASTER_PORT")) {
    if (*port < 1 || *port > 65535)
      throw Error("MASTER_PORT=" + std::to_string(*port) + " is not a TCP port (1-65535)");
    env.master_port = *port;
  }
  return env;
}

}  // namespace sdtune::distributed
