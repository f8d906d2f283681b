#pragma once
// The UNet's forward pass replayed from CUDA graphs: the first call for a set of input shapes
// runs it twice on a side stream (cuDNN/cuBLAS pick their kernels and workspaces) and records it
// into a graph; later calls copy their inputs into that graph's own input tensors and replay the
// whole forward as one launch. A denoising loop calls the UNet with the same shapes every step,
// and at small batches its ~1,000 kernel launches per forward, not the arithmetic, bound the step.
//
// The graph reads the UNet's weights where they are: changing them in place (a LoRA merged with
// copy_) is seen by the next replay; replacing the tensors is not. The inputs' values may change
// freely; their shapes, dtypes and device pick the graph.
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/models/unet_2d_condition.h"

namespace sdtune::pipeline {

// Whether this build can capture CUDA graphs (its torch has CUDA).
bool cuda_graphs_available();

class CudaGraphUNet {
 public:
  explicit CudaGraphUNet(models::UNet2DConditionModel unet);
  ~CudaGraphUNet();
  CudaGraphUNet(const CudaGraphUNet&) = delete;
  CudaGraphUNet& operator=(const CudaGraphUNet&) = delete;

  // unet->forward(sample, timestep, context, added), from the graph for these inputs' shapes
  // (captured on the first call). The result is the caller's own tensor (a copy of the graph's
  // output, which the next replay overwrites). All tensors on one CUDA device; `timestep` may be
  // a CPU scalar, as a scheduler's timesteps are.
  at::Tensor forward(const at::Tensor& sample, const at::Tensor& timestep,
                     const at::Tensor& context, const models::AddedConditions* added = nullptr);

  // Graphs captured so far (one per set of shapes).
  size_t graphs() const;

 private:
  struct Graph;
  using Key = std::vector<int64_t>;  // shapes and dtypes of every input
  models::UNet2DConditionModel unet_;
  std::map<Key, std::unique_ptr<Graph>> graphs_;
};

}  // namespace sdtune::pipeline
