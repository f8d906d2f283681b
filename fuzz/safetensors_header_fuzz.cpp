// libFuzzer target: arbitrary bytes as a whole .safetensors file, read by SafetensorsFile::open.
// A bad file must end in sdtune::Error. A file that opens must lay its tensors out as the format
// says (the views tile the data buffer in offset order, byte for byte the input's), and writing
// them back with write_safetensors must give a file that opens to the same tensors and metadata.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "sdtune/error.h"
#include "sdtune/io/safetensors.h"

namespace {

using sdtune::fuzz::check;
using sdtune::io::SafetensorsFile;

// open() takes a path: an in-memory file reached through /proc keeps each run off the disk.
const std::string& input_path() {
  static const std::string path = [] {
    const int fd = memfd_create("safetensors_header_fuzz", 0);
    check(fd >= 0, "memfd_create failed");
    return "/proc/self/fd/" + std::to_string(fd);
  }();
  return path;
}

void set_input(const uint8_t* data, size_t size) {
  const int fd = std::stoi(input_path().substr(std::strlen("/proc/self/fd/")));
  check(ftruncate(fd, 0) == 0, "ftruncate failed");
  for (size_t done = 0; done < size;) {
    const ssize_t n = pwrite(fd, data + done, size - done, static_cast<off_t>(done));
    check(n > 0, "pwrite failed");
    done += static_cast<size_t>(n);
  }
}

void check_layout(const SafetensorsFile& file, const uint8_t* data, size_t size) {
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = header_size << 8 | data[i];
  const size_t data_begin = 8 + static_cast<size_t>(header_size);
  size_t offset = 0;
  for (const auto& t : file.tensors()) {
    check(t.nbytes == sdtune::io::tensor_nbytes(t.dtype, t.shape), "nbytes != shape x dtype",
          t.name);
    check(t.numel() >= 0, "negative numel", t.name);
    check(t.nbytes <= size - data_begin - offset, "view extends past the data buffer", t.name);
    // Comparing the bytes also makes ASan check that the view lies inside the mapping.
    check(t.nbytes == 0 || std::memcmp(t.data, data + data_begin + offset, t.nbytes) == 0,
          "view does not hold the input's bytes at its offset", t.name);
    check(file.find(t.name) != nullptr, "find() misses a tensor", t.name);
    offset += t.nbytes;
  }
  check(data_begin + offset == size, "tensors do not cover the data buffer");
}

void check_round_trip(const SafetensorsFile& file) {
  std::vector<sdtune::io::TensorWrite> writes;
  for (const auto& t : file.tensors()) writes.push_back({t.name, t.dtype, t.shape, t.data});
  const auto path = sdtune::fuzz::scratch_dir() / "round_trip.safetensors";
  std::optional<SafetensorsFile> again;
  try {
    sdtune::io::write_safetensors(path, writes, file.metadata());
    again.emplace(SafetensorsFile::open(path));
  } catch (const sdtune::Error& e) {
    check(false, "a file that opens does not survive write_safetensors + open", e.what());
  }
  check(again->metadata() == file.metadata(), "metadata differs after the round trip");
  check(again->tensors().size() == file.tensors().size(), "tensor count differs after round trip");
  for (const auto& t : file.tensors()) {
    const auto* u = again->find(t.name);
    check(u != nullptr && u->dtype == t.dtype && u->shape == t.shape && u->nbytes == t.nbytes &&
              (t.nbytes == 0 || std::memcmp(u->data, t.data, t.nbytes) == 0),
          "tensor differs after the round trip", t.name);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  set_input(data, size);
  std::optional<SafetensorsFile> file;
  try {
    file.emplace(SafetensorsFile::open(input_path()));
  } catch (const sdtune::Error&) {
    return 0;  // the expected outcome for a malformed file
  }
  check_layout(*file, data, size);
  check_round_trip(*file);
  return 0;
}
