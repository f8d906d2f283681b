#pragma once
// Gradients averaged over the ranks while the backward pass is still running, as PyTorch's
// DistributedDataParallel does: the trainable tensors are packed into buckets of about 25 MB (in
// reverse order, which is roughly the order in which backward finishes them); a hook on each
// tensor's gradient accumulator marks it ready, and when every tensor of a bucket is ready its
// all-reduce starts, so that communication overlaps the rest of the backward pass. Buckets start
// in index order on every rank (a ready bucket waits for the ones before it), so that the ranks'
// collectives always pair up.
//
// Gradients become views of the buckets (DDP's gradient_as_bucket_view): each fresh gradient is
// copied into its bucket once, as it is finished, and the view replaces it as .grad; the
// all-reduce then works on the bucket itself, and the averaged gradients are where the optimizer
// reads them, with no copy back.
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/distributed/process_group.h"

namespace sdtune::distributed {

class GradientReducer {
 public:
  // `params`: the trainable leaf tensors (contiguous), in the same order on every rank.
  GradientReducer(ProcessGroup& group, const std::vector<at::Tensor>& params,
                  int64_t bucket_bytes = 25 << 20);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // The next backward pass is the last one before the optimizer step (with gradient
  // accumulation, the micro-batches before it only accumulate): what they accumulated moves into
  // the buckets, and the pass's hooks start the buckets.
  void arm();
  // After that backward pass: starts the buckets that are not ready, waits for all, and divides
  // them by the world size, so that every .grad is its mean over the ranks. A tensor that had no
  // gradient before arm() and got none from the pass (frozen, unused) is left without one.
  void finish();

  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // Of the last finish()'s buckets, how many had started during the backward pass.
  int64_t started_in_backward() const { return started_in_backward_; }

 private:
  struct Bucket {
    std::vector<int64_t> members;  // indices into params_
    at::Tensor flat;               // their gradients, packed
    int64_t ready = 0;
    ProcessGroup::Pending pending;
  };
  void mark_ready(int64_t param);
  void start(Bucket& b);

  ProcessGroup& group_;
  std::vector<at::Tensor> params_;
  std::vector<at::Tensor> views_;  // param -> its slot of its bucket, shaped as the param
  std::vector<Bucket> buckets_;
  std::vector<int64_t> bucket_of_;
  std::vector<bool> ready_;     // this pass
  std::vector<bool> had_grad_;  // before arm()
  size_t next_ = 0;             // the first bucket not yet started
  bool armed_ = false;
  int64_t started_in_backward_ = 0;
  std::mutex mutex_;  // the hooks run on autograd's threads
  struct Hooks;       // the gradient accumulators, kept alive with their hooks
  std::unique_ptr<Hooks> hooks_;
};

}  // namespace sdtune::distributed
