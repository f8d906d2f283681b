#include "sdtune/train/determinism.h"

#include <cstdlib>

#include <ATen/Context.h>

namespace sdtune::train {

void use_deterministic_algorithms() {
  // cuBLAS splits a GEMM's reduction differently with more workspace streams; one fixed
  // configuration of 8 workspaces of 4 MiB makes its results reproducible (CUDA >= 10.2).
  setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
  auto& ctx = at::globalContext();
  // warn_only = false: attention's backward passes pick their deterministic variants only then.
  ctx.setDeterministicAlgorithms(true, /*warn_only=*/false);
  ctx.setDeterministicCuDNN(true);
  ctx.setBenchmarkCuDNN(false);
}

}  // namespace sdtune::train
