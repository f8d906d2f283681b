#include "sdtune/data/batch_sampler.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <map>

#include "sdtune/error.h"

namespace sdtune::data {

BatchSampler::BatchSampler(std::vector<int64_t> groups, int64_t batch_size, uint64_t seed)
    : groups_(std::move(groups)), batch_size_(batch_size), seed_(seed) {
  if (groups_.empty()) throw Error("no training examples");
  if (batch_size_ < 1)
    throw Error("batch size must be at least 1, got " + std::to_string(batch_size_));
  start_epoch();
}

void BatchSampler::start_epoch() {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed_ + epoch_);
  const int64_t n = static_cast<int64_t>(groups_.size());
  const at::Tensor perm = at::randperm(n, gen, at::kLong);
  const int64_t* order = perm.data_ptr<int64_t>();
  // Batches are cut per bucket in permutation order, then the batches themselves are shuffled
  // (kohya's scheme); with one bucket this is plain shuffled batching.
  std::map<int64_t, std::vector<int64_t>> by_group;
  std::vector<std::vector<int64_t>> all;
  for (int64_t i = 0; i < n; ++i) {
    auto& pending = by_group[groups_[order[i]]];
    pending.push_back(order[i]);
    if (static_cast<int64_t>(pending.size()) == batch_size_) {
      all.push_back(std::move(pending));
      pending.clear();
    }
  }
  for (auto& [group, pending] : by_group)
    if (!pending.empty()) all.push_back(std::move(pending));
  if (by_group.size() > 1) {
    const at::Tensor batch_perm = at::randperm(static_cast<int64_t>(all.size()), gen, at::kLong);
    std::vector<std::vector<int64_t>> shuffled;
    for (int64_t i = 0; i < batch_perm.numel(); ++i)
      shuffled.push_back(all[batch_perm.data_ptr<int64_t>()[i]]);
    all = std::move(shuffled);
  }
  batches_ = std::move(all);
  position_ = 0;
}

std::vector<int64_t> BatchSampler::next() {
  if (position_ >= static_cast<int64_t>(batches_.size())) {
    ++epoch_;
    start_epoch();
  }
  return batches_[position_++];
}

int64_t BatchSampler::batches_per_epoch() const {
  return static_cast<int64_t>(batches_.size());
}

io::StateDict BatchSampler::state_dict() const {
  std::vector<int64_t> flat, sizes;
  for (const auto& b : batches_) {
    flat.insert(flat.end(), b.begin(), b.end());
    sizes.push_back(static_cast<int64_t>(b.size()));
  }
  return {{"epoch", at::scalar_tensor(epoch_, at::kLong)},
          {"position", at::scalar_tensor(position_, at::kLong)},
          {"batches", at::tensor(flat, at::kLong)},
          {"batch_sizes", at::tensor(sizes, at::kLong)}};
}

void BatchSampler::load_state_dict(const io::StateDict& state) {
  io::KeyMismatch problems;
  for (const char* key : {"epoch", "position", "batches", "batch_sizes"})
    if (!state.count(key)) problems.missing.push_back(key);
  problems.throw_if_any("data order state");
  const at::Tensor flat = state.at("batches").to(at::kLong).contiguous();
  const at::Tensor sizes = state.at("batch_sizes").to(at::kLong).contiguous();
  std::vector<std::vector<int64_t>> batches;
  int64_t offset = 0;
  const int64_t n = static_cast<int64_t>(groups_.size());
  for (int64_t b = 0; b < sizes.numel(); ++b) {
    const int64_t size = sizes.data_ptr<int64_t>()[b];
    if (size < 1 || offset + size > flat.numel())
      throw Error("data order state: batch sizes do not match the batches");
    std::vector<int64_t> batch(flat.data_ptr<int64_t>() + offset,
                               flat.data_ptr<int64_t>() + offset + size);
    for (int64_t i : batch)
      if (i < 0 || i >= n)
        throw Error("data order state names example " + std::to_string(i) +
                    " but the dataset has " + std::to_string(n) +
                    ": was the dataset changed since the checkpoint?");
    batches.push_back(std::move(batch));
    offset += size;
  }
  const int64_t position = state.at("position").item<int64_t>();
  if (position < 0 || position > static_cast<int64_t>(batches.size()))
    throw Error("data order state: position out of range");
  batches_ = std::move(batches);
  epoch_ = state.at("epoch").item<int64_t>();
  position_ = position;
}

}  // namespace sdtune::data
