#pragma once
// Deterministic GPU kernels, as torch.use_deterministic_algorithms(True) with
// CUBLAS_WORKSPACE_CONFIG=:4096:8 and cudnn.deterministic give them: cuBLAS with a fixed
// workspace, cuDNN's deterministic convolution algorithms (no benchmark autotuning), and the
// deterministic backward passes of attention and of the scatter-style ops. The same inputs then
// give the same bits on the same GPU, so a resumed run equals the straight one there as on the CPU.
// The price is speed; ops with no deterministic CUDA kernel raise an error naming themselves.

namespace sdtune::train {

// Call before the first CUDA operation of the process (cuBLAS reads its workspace setting when
// its first handle is created). An explicit CUBLAS_WORKSPACE_CONFIG in the environment is kept.
void use_deterministic_algorithms();

}  // namespace sdtune::train
