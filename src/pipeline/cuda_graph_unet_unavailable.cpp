// Built instead of cuda_graph_unet.cpp when the torch that sdtune links has no CUDA.
#include "sdtune/error.h"
#include "sdtune/pipeline/cuda_graph_unet.h"

namespace sdtune::pipeline {

struct CudaGraphUNet::Graph {};

bool cuda_graphs_available() {
  return false;
}

CudaGraphUNet::CudaGraphUNet(models::UNet2DConditionModel unet) : unet_(std::move(unet)) {}
CudaGraphUNet::~CudaGraphUNet() = default;

size_t CudaGraphUNet::graphs() const {
  return 0;
}

at::Tensor CudaGraphUNet::forward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const models::AddedConditions*) {
  throw Error("this sdtune was built without CUDA (its torch has none): no CUDA graphs");
}

}  // namespace sdtune::pipeline
