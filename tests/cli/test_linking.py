"""The sdtune binary binds the C++ runtime's symbols to the C++ runtime.

Some LibTorch builds (torch 2.11's cu130 wheel) export a private copy of std::filesystem from
libtorch.so whose remove_all calls through a weak symbol that stays null; bound to it, sdtune
crashed whenever it replaced a non-empty folder (e.g. resuming into an existing output). The build
lists libstdc++ first among the binary's libraries so that its definitions win."""

import os
import re
import subprocess

import pytest


def needed_libraries(binary):
    out = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def test_libstdcxx_comes_before_libtorch(sdtune_bin):
    libs = needed_libraries(sdtune_bin)
    stdcxx = [i for i, lib in enumerate(libs) if lib.startswith("libstdc++")]
    torch = [i for i, lib in enumerate(libs) if lib.startswith("libtorch") or lib.startswith("libc10")]
    assert stdcxx and torch, libs
    assert stdcxx[0] < min(torch), f"libstdc++ must precede LibTorch's libraries: {libs}"


def test_filesystem_calls_bind_to_libstdcxx(sdtune_bin):
    # LD_BIND_NOW resolves every symbol at start-up, LD_DEBUG=bindings reports where each went.
    env = dict(os.environ, LD_DEBUG="bindings", LD_BIND_NOW="1")
    proc = subprocess.run([str(sdtune_bin), "--help"], capture_output=True, text=True, env=env)
    if "binding file" not in proc.stderr:
        pytest.skip("this C library's dynamic linker does not report bindings")
    ours = [l for l in proc.stderr.splitlines()
            if re.search(rf"binding file \S*{re.escape(sdtune_bin.name)} \[0\]", l) and "_ZNSt10filesystem" in l]
    assert ours, "no std::filesystem binding reported"
    wrong = [l.split("binding file ", 1)[1] for l in ours if "libstdc++" not in l.split(" to ", 1)[1]]
    assert not wrong, "std::filesystem bound outside libstdc++:\n" + "\n".join(wrong[:10])


def test_sdtune_does_not_call_filesystem_remove_all(sdtune_bin):
    # io::remove_tree (nftw) replaces it: bound to such a libtorch.so copy, it jumps to address 0.
    out = subprocess.run(["nm", "-D", "--undefined-only", str(sdtune_bin)], capture_output=True, text=True,
                         check=True).stdout
    assert "_ZNSt10filesystem10remove_all" not in out
