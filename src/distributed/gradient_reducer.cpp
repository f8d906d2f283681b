#include "sdtune/distributed/gradient_reducer.h"

#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include "sdtune/error.h"

namespace sdtune::distributed {

// A leaf tensor's gradient accumulator (the autograd node that adds each backward's gradient to
// .grad) lives only while something holds it: the tensor holds it weakly, so the reducer keeps
// each one, with its hook, for its own lifetime.
struct GradientReducer::Hooks {
  std::vector<c10::intrusive_ptr<torch::autograd::Node>> accumulators;
};

GradientReducer::GradientReducer(ProcessGroup& group, const std::vector<at::Tensor>& params,
                                 int64_t bucket_bytes)
    : group_(group),
      params_(params),
      bucket_of_(params.size()),
      param_ready_(params.size(), false),
      hooks_(std::make_unique<Hooks>()) {
  // Buckets over the tensors in reverse order, one dtype and device each, closed at bucket_bytes.
  int64_t bytes = 0;
  for (int64_t i = static_cast<int64_t>(params_.size()) - 1; i >= 0; --i) {
    const at::Tensor& p = params_[i];
    if (!p.requires_grad() || !p.is_leaf())
      throw Error("gradient reducer: trainable tensor " + std::to_string(i) +
                  " is not a leaf that requires grad");
    const bool fits = !buckets_.empty() && bytes < bucket_bytes &&
                      params_[buckets_.back().members.front()].scalar_type() == p.scalar_type() &&
                      params_[buckets_.back().members.front()].device() == p.device();
    if (!fits) {
      buckets_.emplace_back();
      bytes = 0;
    }
    buckets_.back().members.push_back(i);
    bucket_of_[i] = static_cast<int64_t>(buckets_.size()) - 1;
    bytes += p.numel() * p.element_size();
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    auto accumulator = torch::autograd::impl::grad_accumulator(params_[i]);
    // Runs after the accumulator has added this backward's gradient to .grad.
    accumulator->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [this, i](const torch::autograd::variable_list& outputs,
                  const torch::autograd::variable_list&) {
          mark_ready(static_cast<int64_t>(i));
          return outputs;
        }));
    hooks_->accumulators.push_back(std::move(accumulator));
  }
}

GradientReducer::~GradientReducer() = default;

void GradientReducer::arm() {
  std::lock_guard<std::mutex> lock(mutex_);
  armed_ = true;
  started_in_backward_ = 0;
}

void GradientReducer::mark_ready(int64_t param) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!armed_) return;  // an accumulation micro-batch
  if (param_ready_[param])
    // Its gradient would change after its bucket was sent (a tensor used by two checkpointed
    // blocks, or a second backward pass before finish()): refuse rather than average a partial
    // gradient.
    throw Error("gradient reducer: the gradient of trainable tensor " + std::to_string(param) +
                " was finished twice between arm() and finish()");
  param_ready_[param] = true;
  Bucket& b = buckets_[bucket_of_[param]];
  ++b.ready;
  // Start every ready bucket from the first unstarted one on, in index order on every rank.
  while (next_ < buckets_.size() &&
         buckets_[next_].ready == static_cast<int64_t>(buckets_[next_].members.size())) {
    start(buckets_[next_++]);
    ++started_in_backward_;
  }
}

// Packs the bucket's gradients (zeros for a tensor without one) and starts their sum.
void GradientReducer::start(Bucket& b) {
  int64_t numel = 0;
  for (int64_t i : b.members) numel += params_[i].numel();
  const at::Tensor& first = params_[b.members.front()];
  if (!b.flat.defined()) b.flat = at::empty({numel}, first.options().requires_grad(false));
  int64_t offset = 0;
  for (int64_t i : b.members) {
    const at::Tensor& grad = params_[i].grad();
    at::Tensor slot = b.flat.narrow(0, offset, params_[i].numel());
    if (grad.defined())
      slot.copy_(grad.reshape(-1));
    else
      slot.zero_();
    offset += params_[i].numel();
  }
  b.pending = group_.start_sum(b.flat, "all-reduce of gradients");
  b.started = true;
}

void GradientReducer::finish() {
  std::lock_guard<std::mutex> lock(mutex_);
  // Tensors that got no gradient (frozen ones, a stopped text encoder) leave buckets unready.
  while (next_ < buckets_.size()) start(buckets_[next_++]);
  for (Bucket& b : buckets_) {
    b.pending.wait();
    // The sum divided by the world size: exact for 2 ranks (and every power of two).
    b.flat.div_(static_cast<double>(group_.size()));
    int64_t offset = 0;
    for (int64_t i : b.members) {
      const int64_t n = params_[i].numel();
      at::Tensor grad = params_[i].mutable_grad();
      if (grad.defined()) grad.copy_(b.flat.narrow(0, offset, n).view_as(grad));
      offset += n;
    }
    b.ready = 0;
    b.started = false;
  }
  std::fill(param_ready_.begin(), param_ready_.end(), false);
  next_ = 0;
  armed_ = false;
}

}  // namespace sdtune::distributed
