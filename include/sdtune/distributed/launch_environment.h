#pragma once
// Which process of a data-parallel run this is, as the launcher says through the environment:
// torchrun (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), Open MPI's
// mpirun (OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE) or Slurm's srun (SLURM_PROCID,
// SLURM_STEP_NUM_TASKS, SLURM_LOCALID). Without any of them sdtune is one process, as before.
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>

namespace sdtune::distributed {

struct LaunchEnvironment {
  std::string launcher = "none";  // "torchrun", "mpirun", "srun" or "none"
  int64_t rank = 0, world_size = 1;
  int64_t local_rank = 0, local_world_size = 1;  // on this machine; local_rank picks the GPU
  // The TCP store's address (rank 0 serves it). mpirun and srun do not name one: MASTER_ADDR
  // when set, else srun's launch node (SLURM_LAUNCH_NODE_IPADDR), else this machine when every
  // rank is on it.
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;

  // Whether to join a process group: always under torchrun, which is asked for by name (so
  // `--nproc-per-node 1` runs the data-parallel path with one rank); under mpirun and srun, which
  // also start single programs that are not data-parallel, when there are several ranks.
  bool distributed() const { return world_size > 1 || launcher == "torchrun"; }
};

// Reads the environment through `getenv` (the process's own by default). Variables that are
// present but malformed or inconsistent (not an integer, a rank outside the world, a port
// outside 1-65535, several machines and no address) are an Error naming the variable.
LaunchEnvironment launch_environment(const std::function<const char*(const char*)>& getenv =
                                         [](const char* name) { return std::getenv(name); });

}  // namespace sdtune::distributed
