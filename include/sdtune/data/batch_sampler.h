#pragma once
// The order in which training examples are visited: a fresh random permutation each epoch, cut
// into batches (the last one smaller, as a DataLoader with drop_last=False), optionally grouped
// by aspect-ratio bucket so that a batch holds images of one size. Its whole state (epoch,
// position, permutation) goes into checkpoints, so a resumed run sees the same batches.
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/io/state_dict.h"

namespace sdtune::data {

class BatchSampler {
 public:
  // `groups[i]` is example i's bucket (all 0 without bucketing). The permutation of epoch e is
  // drawn from a generator seeded with seed + e, so it does not depend on anything else drawn.
  // In a data-parallel run every rank walks the same order (the trainer takes each rank's
  // micro-batches from it).
  BatchSampler(std::vector<int64_t> groups, int64_t batch_size, uint64_t seed);

  // The example indices of the next batch; moves to a new epoch (and permutation) after the last.
  std::vector<int64_t> next();

  int64_t epoch() const { return epoch_; }
  // Batches per epoch.
  int64_t batches_per_epoch() const;

  // "epoch", "position" (batches taken this epoch) and "batches" (the epoch's batches, flattened,
  // with "batch_sizes").
  io::StateDict state_dict() const;
  void load_state_dict(const io::StateDict& state);

 private:
  void start_epoch();

  std::vector<int64_t> groups_;
  int64_t batch_size_;
  uint64_t seed_;
  int64_t epoch_ = 0, position_ = 0;
  std::vector<std::vector<int64_t>> batches_;  // the current epoch's
};

}  // namespace sdtune::data
