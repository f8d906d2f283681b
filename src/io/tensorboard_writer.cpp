#include "sdtune/io/tensorboard_writer.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "io/crc32c.h"
#include "io/tensorboard_event.h"
#include "sdtune/error.h"
#include "sdtune/io/image.h"

namespace sdtune::io {
namespace {

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string event_file_name() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') std::strcpy(host, "localhost");
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(
      std::chrono::system_clock::now().time_since_epoch());
  return "events.out.tfevents." + std::to_string(now.count()) + "." + host + "." +
         std::to_string(::getpid()) + ".sdtune";
}

void put_le(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xFF));
}

}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw Error("cannot create log directory: " + ec.message(), dir.string());
  path_ = dir / event_file_name();
  // "x": exclusive, so that another writer's file of the same name is never truncated.
  file_.reset(std::fopen(path_.c_str(), "wbx"));
  if (!file_)
    throw Error(std::string("cannot create event file: ") + std::strerror(errno), path_.string());
  write_record(tensorboard_event::file_version(unix_seconds()));
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_) std::fflush(file_.get());
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step) {
  write_record(tensorboard_event::scalar(unix_seconds(), step, tag, static_cast<float>(value)));
}

void TensorBoardWriter::add_image(const std::string& tag, const at::Tensor& rgb, int64_t step) {
  if (rgb.dim() != 3 || rgb.size(2) != 3 || rgb.scalar_type() != at::kByte)
    throw Error("image for TensorBoard must be uint8 [H,W,3], got " +
                    std::string(c10::toString(rgb.scalar_type())) + " " + c10::str(rgb.sizes()),
                path_.string(), tag);
  write_record(tensorboard_event::image(unix_seconds(), step, tag,
                                        static_cast<int32_t>(rgb.size(0)),
                                        static_cast<int32_t>(rgb.size(1)), encode_png(rgb)));
}

void TensorBoardWriter::flush() {
  if (std::fflush(file_.get()) != 0)
    throw Error(std::string("cannot write event file: ") + std::strerror(errno), path_.string());
}

// TFRecord framing: uint64 length (little-endian), masked CRC-32C of those 8 bytes, the data,
// masked CRC-32C of the data (CRCs as uint32 little-endian).
void TensorBoardWriter::write_record(const std::string& event) {
  std::string record;
  record.reserve(event.size() + 16);
  put_le(record, event.size(), 8);
  put_le(record, masked_crc32c(crc32c(record.data(), 8)), 4);
  record += event;
  put_le(record, masked_crc32c(crc32c(event)), 4);
  if (std::fwrite(record.data(), 1, record.size(), file_.get()) != record.size())
    throw Error(std::string("cannot write event file: ") + std::strerror(errno), path_.string());
}

}  // namespace sdtune::io
