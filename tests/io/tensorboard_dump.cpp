// Test driver: writes a small TensorBoard event file, so that tests/io/test_tensorboard_writer.py
// can read it with TensorBoard's own reader.
//
//   sdtune_tensorboard_dump --dir DIR
//
// Writes "train/loss" = 1/(step+1) and "train/lr" = 1e-4 * (5-step)/5 for steps 0..4, and at
// step 4 the 8×12 (H×W) image "validation/grid": pixel (y,x) = (20*x, 30*y, 255 if (x+y) even
// else 0). Prints the event file's path.
#include <iostream>
#include <string>

#include <ATen/ATen.h>

#include "sdtune/error.h"
#include "sdtune/io/tensorboard_writer.h"

namespace {

at::Tensor pattern(int64_t height, int64_t width) {
  at::Tensor rgb = at::empty({height, width, 3}, at::kByte);
  auto px = rgb.accessor<uint8_t, 3>();
  for (int64_t y = 0; y < height; ++y) {
    for (int64_t x = 0; x < width; ++x) {
      px[y][x][0] = static_cast<uint8_t>(20 * x);
      px[y][x][1] = static_cast<uint8_t>(30 * y);
      px[y][x][2] = (x + y) % 2 == 0 ? 255 : 0;
    }
  }
  return rgb;
}

int run(int argc, char** argv) {
  if (argc != 3 || std::string(argv[1]) != "--dir") throw sdtune::Error("usage: --dir DIR");
  sdtune::io::TensorBoardWriter writer(argv[2]);
  for (int64_t step = 0; step < 5; ++step) {
    writer.add_scalar("train/loss", 1.0 / static_cast<double>(step + 1), step);
    writer.add_scalar("train/lr", 1e-4 * static_cast<double>(5 - step) / 5.0, step);
    writer.flush();
  }
  writer.add_image("validation/grid", pattern(8, 12), 4);
  writer.flush();
  std::cout << writer.path().string() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "sdtune_tensorboard_dump: error: " << e.what() << "\n";
    return 1;
  }
}
