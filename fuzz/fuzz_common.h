#pragma once
// Shared by the fuzz targets: a scratch folder for the APIs that read files, and the check that
// stops a run when a property of a successful parse fails (libFuzzer then saves the input as a
// crash, like any sanitizer report).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace sdtune::fuzz {

// A folder of this process's own: under $SDTUNE_FUZZ_TMP when set (the scripts point it at a
// folder they remove), else /dev/shm, so that the per-input file writes stay off the disk.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    namespace fs = std::filesystem;
    const char* env = std::getenv("SDTUNE_FUZZ_TMP");
    fs::path base = env != nullptr && *env != '\0' ? fs::path(env)
                    : fs::is_directory("/dev/shm") ? fs::path("/dev/shm")
                                                   : fs::temp_directory_path();
    fs::path own = base / ("sdtune-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(own);
    std::atexit([] { std::filesystem::remove_all(scratch_dir()); });
    return own;
  }();
  return dir;
}

inline void write_file(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out.flush()) {
    std::fprintf(stderr, "fuzz harness: cannot write %s\n", path.c_str());
    std::abort();
  }
}

// A broken promise of the code under test: reported and aborted on, so libFuzzer keeps the input.
inline void check(bool ok, std::string_view what, std::string_view detail = {}) {
  if (ok) return;
  std::fprintf(stderr, "fuzz property failed: %.*s%s%.*s\n", static_cast<int>(what.size()),
               what.data(), detail.empty() ? "" : ": ", static_cast<int>(detail.size()),
               detail.data());
  std::abort();
}

}  // namespace sdtune::fuzz
