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
      views_(params.size()),
      bucket_of_(params.size()),
      ready_(params.size(), false),
      had_grad_(params.size(), false),
      hooks_(std::make_unique<Hooks>()) {
  // Buckets over the tensors in reverse order, one dtype and device each, closed at bucket_bytes.
  int64_t bytes = 0;
  for (int64_t i = static_cast<int64_t>(params_.size()) - 1; i >= 0; --i) {
    const at::Tensor& p = params_[i];
    if (!p.requires_grad() || !p.is_leaf() || !p.is_contiguous())
      throw Error("gradient reducer: trainable tensor " + std::to_string(i) +
                  " is not a contiguous leaf that requires grad");
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
  for (Bucket& b : buckets_) {
    int64_t numel = 0;
    for (int64_t i : b.members) numel += params_[i].numel();
    b.flat = at::empty({numel}, params_[b.members.front()].options().requires_grad(false));
    int64_t offset = 0;
    for (int64_t i : b.members) {
      views_[i] = b.flat.narrow(0, offset, params_[i].numel()).view(params_[i].sizes());
      offset += params_[i].numel();
    }
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
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& grad = params_[i].mutable_grad();
    had_grad_[i] = grad.defined();
    // What earlier micro-batches accumulated moves into the bucket, and backward adds to it
    // there, in place. A tensor without a gradient keeps none: backward's fresh gradient is
    // then taken over without an addition, and the hook copies it into the bucket (one pass
    // over it, where zeroing the slot and adding to it would be two).
    if (grad.defined() && grad.data_ptr() != views_[i].data_ptr()) {
      views_[i].copy_(grad);
      grad = views_[i];
    }
  }
  armed_ = true;
  started_in_backward_ = 0;
}

void GradientReducer::mark_ready(int64_t param) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!armed_) return;  // an accumulation micro-batch
  if (ready_[param])
    // Its gradient would change after its bucket was sent (a tensor used by two checkpointed
    // blocks, or a second backward pass before finish()): refuse rather than average a partial
    // gradient.
    throw Error("gradient reducer: the gradient of trainable tensor " + std::to_string(param) +
                " was finished twice between arm() and finish()");
  ready_[param] = true;
  // A gradient that is not its bucket's view yet (this pass made it) is copied there, and the
  // view becomes the tensor's .grad.
  at::Tensor& grad = params_[param].mutable_grad();
  if (grad.data_ptr() != views_[param].data_ptr()) {
    views_[param].copy_(grad);
    grad = views_[param];
  }
  ++buckets_[bucket_of_[param]].ready;
  // Start every ready bucket from the first unstarted one on, in index order on every rank.
  while (next_ < buckets_.size() &&
         buckets_[next_].ready == static_cast<int64_t>(buckets_[next_].members.size())) {
    start(buckets_[next_++]);
    ++started_in_backward_;
  }
}

void GradientReducer::start(Bucket& b) {
  b.pending = group_.start_sum(b.flat, "all-reduce of gradients");
}

void GradientReducer::finish() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!armed_) throw Error("gradient reducer: finish() without arm()");
  // Tensors that got no gradient in this pass (frozen ones, a stopped text encoder) leave
  // buckets unready. Their slots must hold the same on every rank: zeros, or what earlier
  // micro-batches accumulated (already there since arm()).
  for (size_t i = 0; i < params_.size(); ++i)
    if (!ready_[i] && !had_grad_[i]) views_[i].zero_();
  while (next_ < buckets_.size()) start(buckets_[next_++]);
  for (Bucket& b : buckets_) {
    b.pending.wait();
    // The sum divided by the world size: exact for 2 ranks (and every power of two).
    if (group_.size() > 1) b.flat.div_(static_cast<double>(group_.size()));
    b.ready = 0;
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!ready_[i] && !had_grad_[i]) params_[i].mutable_grad().reset();
    ready_[i] = false;
  }
  next_ = 0;
  armed_ = false;
}

}  // namespace sdtune::distributed
