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

#include "driver.h"
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

void run(const std::string& dir) {
  sdtune::io::TensorBoardWriter writer(dir);
  for (int64_t step = 0; step < 5; ++step) {
    writer.add_scalar("train/loss", 1.0 / static_cast<double>(step + 1), step);
    writer.add_scalar("train/lr", 1e-4 * static_cast<double>(5 - step) / 5.0, step);
    writer.flush();
  }
  writer.add_image("validation/grid", pattern(8, 12), 4);
  writer.flush();
  std::cout << writer.path().string() << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  return sdtune::driver::run_driver(
      argc, argv, "Writes a small TensorBoard event file",
      [&](CLI::App& app) { app.add_option("--dir", dir, "Log directory")->required(); },
      [&] { run(dir); });
}
