#pragma once
// Removes a file or a folder with everything in it, as std::filesystem::remove_all does, but
// through the C library's nftw. Some LibTorch builds (torch 2.11's cu130 wheel) export their own
// copy of std::filesystem from libtorch.so, and the dynamic linker may bind our calls to it; its
// remove_all calls a weak symbol that stays null there, a crash on any non-empty folder.
#include <cstdint>
#include <filesystem>
#include <system_error>

namespace sdtune::io {

// The number of entries removed; 0 when `path` does not exist. Errors go to `ec`.
std::uintmax_t remove_tree(const std::filesystem::path& path, std::error_code& ec) noexcept;

// As above; an Error naming the path on failure.
std::uintmax_t remove_tree(const std::filesystem::path& path);

}  // namespace sdtune::io
