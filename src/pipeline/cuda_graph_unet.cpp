// Built when sdtune's torch has CUDA (CMake: TARGET torch_cuda and the wheel's CUDA headers);
// cuda_graph_unet_unavailable.cpp otherwise.
#include "sdtune/pipeline/cuda_graph_unet.h"

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "sdtune/error.h"

namespace sdtune::pipeline {

bool cuda_graphs_available() {
  return true;
}

// One captured forward: the graph and the tensors it reads and writes. Replays write the same
// output tensor; inputs are copied into the same input tensors.
struct CudaGraphUNet::Graph {
  at::cuda::CUDAGraph graph;
  at::Tensor sample, timestep, context, text_embeds, time_ids, out;
};

namespace {

void append_shape(std::vector<int64_t>& key, const at::Tensor& t) {
  if (!t.defined()) {
    key.push_back(-1);
    return;
  }
  key.push_back(static_cast<int64_t>(t.scalar_type()));
  key.push_back(t.dim());
  for (int64_t s : t.sizes()) key.push_back(s);
}

}  // namespace

CudaGraphUNet::CudaGraphUNet(models::UNet2DConditionModel unet) : unet_(std::move(unet)) {}
CudaGraphUNet::~CudaGraphUNet() = default;

size_t CudaGraphUNet::graphs() const {
  return graphs_.size();
}

at::Tensor CudaGraphUNet::forward(const at::Tensor& sample, const at::Tensor& timestep,
                                  const at::Tensor& context, const models::AddedConditions* added) {
  if (!sample.is_cuda() || !context.is_cuda())
    throw Error("CUDA graphs need the UNet's inputs on a CUDA device");
  // The timestep as the UNet takes it: [1] or [B], on the device (a CPU scalar is copied in).
  const at::Tensor t = timestep.dim() == 0 ? timestep.reshape({1}) : timestep;
  const at::Tensor text_embeds = added ? added->text_embeds : at::Tensor();
  const at::Tensor time_ids = added ? added->time_ids : at::Tensor();
  Key key;
  for (const at::Tensor* x : {&sample, &t, &context, &text_embeds, &time_ids})
    append_shape(key, *x);
  key.push_back(sample.get_device());

  auto it = graphs_.find(key);
  if (it == graphs_.end()) {
    const c10::cuda::CUDAGuard device(sample.device());
    auto g = std::make_unique<Graph>();
    g->sample = sample.clone();
    g->timestep = t.to(sample.device(), /*non_blocking=*/false, /*copy=*/true);
    g->context = context.clone();
    std::optional<models::AddedConditions> static_added;
    if (added) {
      g->text_embeds = text_embeds.clone();
      g->time_ids = time_ids.clone();
      static_added = models::AddedConditions{g->text_embeds, g->time_ids};
    }
    const models::AddedConditions* a = static_added ? &*static_added : nullptr;
    // Capture happens on a side stream, after warm-up runs there: the first calls choose
    // cuDNN/cuBLAS algorithms and allocate workspaces, which must not happen during capture.
    c10::cuda::device_synchronize();
    {
      const c10::cuda::CUDAStreamGuard side(c10::cuda::getStreamFromPool());
      for (int i = 0; i < 2; ++i) unet_->forward(g->sample, g->timestep, g->context, a);
      c10::cuda::getCurrentCUDAStream().synchronize();
      g->graph.capture_begin();
      g->out = unet_->forward(g->sample, g->timestep, g->context, a);
      g->graph.capture_end();
    }
    c10::cuda::device_synchronize();
    it = graphs_.emplace(std::move(key), std::move(g)).first;
  }
  Graph& g = *it->second;
  g.sample.copy_(sample);
  g.timestep.copy_(t);
  g.context.copy_(context);
  if (added) {
    g.text_embeds.copy_(text_embeds);
    g.time_ids.copy_(time_ids);
  }
  g.graph.replay();
  return g.out.clone();
}

}  // namespace sdtune::pipeline
