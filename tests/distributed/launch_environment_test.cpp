// The launchers' environments (torchrun, mpirun, srun) read into ranks and the store's address.
#include "sdtune/distributed/launch_environment.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

#include "sdtune/error.h"

namespace sdtune::distributed {
namespace {

using Vars = std::map<std::string, std::string>;

LaunchEnvironment read(const Vars& vars) {
  return launch_environment([&](const char* name) -> const char* {
    const auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

// The Error's message for `vars`, or "" when they are accepted.
std::string refusal(const Vars& vars) {
  try {
    read(vars);
    return "";
  } catch (const Error& e) {
    return e.what();
  }
}

TEST(LaunchEnvironment, NoLauncherIsOneProcess) {
  const LaunchEnvironment env = read({{"SLURM_NTASKS", "4"}, {"SLURM_PROCID", "0"}});
  EXPECT_EQ(env.launcher, "none");
  EXPECT_EQ(env.world_size, 1);
  EXPECT_FALSE(env.distributed());
}

TEST(LaunchEnvironment, Torchrun) {
  const LaunchEnvironment env = read({{"RANK", "3"},
                                      {"WORLD_SIZE", "4"},
                                      {"LOCAL_RANK", "1"},
                                      {"LOCAL_WORLD_SIZE", "2"},
                                      {"MASTER_ADDR", "10.0.0.7"},
                                      {"MASTER_PORT", "29511"}});
  EXPECT_EQ(env.launcher, "torchrun");
  EXPECT_EQ(env.rank, 3);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.local_world_size, 2);
  EXPECT_EQ(env.master_addr, "10.0.0.7");
  EXPECT_EQ(env.master_port, 29511);
  EXPECT_TRUE(env.distributed());
}

TEST(LaunchEnvironment, OneRankJoinsAGroupUnderTorchrunOnly) {
  EXPECT_TRUE(read({{"RANK", "0"}, {"WORLD_SIZE", "1"}}).distributed());
  EXPECT_FALSE(read({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "1"}}).distributed());
  EXPECT_FALSE(read({{"SLURM_PROCID", "0"}, {"SLURM_STEP_NUM_TASKS", "1"}}).distributed());
}

TEST(LaunchEnvironment, MpirunOnOneMachineNeedsNoAddress) {
  const LaunchEnvironment env = read({{"OMPI_COMM_WORLD_RANK", "1"},
                                      {"OMPI_COMM_WORLD_SIZE", "2"},
                                      {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                      {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
  EXPECT_EQ(env.launcher, "mpirun");
  EXPECT_EQ(env.rank, 1);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_addr, "127.0.0.1");
  EXPECT_EQ(env.master_port, 29500);
}

TEST(LaunchEnvironment, SrunUsesItsLaunchNode) {
  const LaunchEnvironment env = read({{"SLURM_PROCID", "5"},
                                      {"SLURM_STEP_NUM_TASKS", "8"},
                                      {"SLURM_LOCALID", "1"},
                                      {"SLURM_LAUNCH_NODE_IPADDR", "192.168.1.2"}});
  EXPECT_EQ(env.launcher, "srun");
  EXPECT_EQ(env.rank, 5);
  EXPECT_EQ(env.world_size, 8);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_addr, "192.168.1.2");
}

TEST(LaunchEnvironment, TorchrunWinsOverTheScheduler) {
  const LaunchEnvironment env = read(
      {{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"SLURM_PROCID", "0"}, {"SLURM_STEP_NUM_TASKS", "1"}});
  EXPECT_EQ(env.launcher, "torchrun");
  EXPECT_EQ(env.world_size, 2);
}

TEST(LaunchEnvironment, BadValuesNameTheVariable) {
  EXPECT_NE(refusal({{"RANK", "one"}, {"WORLD_SIZE", "2"}}).find("RANK=one is not an integer"),
            std::string::npos);
  EXPECT_NE(refusal({{"RANK", "2"}, {"WORLD_SIZE", "2"}}).find("RANK=2 is not a rank"),
            std::string::npos);
  EXPECT_NE(refusal({{"RANK", "0"}, {"WORLD_SIZE", "0"}}).find("WORLD_SIZE=0"), std::string::npos);
  EXPECT_NE(
      refusal({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "2"}, {"LOCAL_WORLD_SIZE", "2"}})
          .find("LOCAL_RANK=2"),
      std::string::npos);
  EXPECT_NE(refusal({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}})
                .find("MASTER_PORT=70000"),
            std::string::npos);
  EXPECT_NE(refusal({{"OMPI_COMM_WORLD_RANK", "0"},
                     {"OMPI_COMM_WORLD_SIZE", "4"},
                     {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}})
                .find("set MASTER_ADDR"),
            std::string::npos);
  EXPECT_EQ(refusal({{"RANK", "0"}, {"WORLD_SIZE", "1"}}), "");
}

}  // namespace
}  // namespace sdtune::distributed
