#pragma once
// TensorBoard event files: the training logs (`tensorboard --logdir OUT/logs`) of scalars (loss,
// learning rate) and images (validation samples), written as TensorBoard's own writers do.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include <ATen/ATen.h>

namespace sdtune::io {

class TensorBoardWriter {
 public:
  // Creates `dir` (and parents) and in it a new events.out.tfevents.<unix time>.<host>.<pid>.sdtune
  // that begins with the file_version event "brain.Event:2". An Error naming the path when either
  // cannot be created (an existing file of that name is never overwritten).
  explicit TensorBoardWriter(const std::filesystem::path& dir);
  ~TensorBoardWriter();  // flushes and closes; never throws
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One scalar (stored as float32, as TensorBoard does) at a global step.
  void add_scalar(const std::string& tag, double value, int64_t step);
  // rgb: uint8 [H,W,3], on any device; stored PNG-encoded (Summary.Image).
  void add_image(const std::string& tag, const at::Tensor& rgb, int64_t step);
  // Hands what was added to the OS (fflush, no fsync), so a running TensorBoard sees it.
  void flush();

  const std::filesystem::path& path() const { return path_; }

 private:
  // One serialized tensorboard.Event in TFRecord framing.
  void write_record(const std::string& event);

  struct Close {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::filesystem::path path_;
  std::unique_ptr<std::FILE, Close> file_;
};

}  // namespace sdtune::io
