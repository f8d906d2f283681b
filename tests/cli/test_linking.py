"""sdtune never calls std::filesystem::remove_all.

Some LibTorch builds (torch 2.11's cu130 wheel) export a private copy of std::filesystem from
libtorch.so, and the dynamic linker binds some of our calls to it (seen on an H200 machine: 9 of
sdtune's std::filesystem bindings went to libtorch.so). That copy's remove_all calls through a weak
symbol that stays null: sdtune crashed whenever it replaced a non-empty folder (e.g. resuming into
an existing output). io::remove_tree (the C library's nftw) does that job instead."""

import subprocess


def test_sdtune_does_not_call_filesystem_remove_all(sdtune_bin):
    out = subprocess.run(["nm", "-D", "--undefined-only", str(sdtune_bin)], capture_output=True, text=True,
                         check=True).stdout
    assert "_ZNSt10filesystem" in out, "nm found no std::filesystem reference at all: wrong binary?"
    assert "_ZNSt10filesystem10remove_all" not in out
