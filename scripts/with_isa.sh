#!/usr/bin/env bash
# Runs a command with one CPU instruction set forced on every kernel library that sdtune and the
# references use: ATen's own kernels (ATEN_CPU_CAPABILITY), MKL's BLAS (MKL_ENABLE_INSTRUCTIONS)
# and oneDNN's convolutions (ONEDNN_MAX_CPU_ISA). That reproduces, on this machine, the rounding of
# a CPU that has only that instruction set (up to the vendor: MKL picks its own paths on AMD).
#   scripts/with_isa.sh avx2 scripts/test.sh       scripts/with_isa.sh default pytest tests/train
# ISA: avx512 | avx2 | default (generic, no vector extensions in ATen, SSE4.2 in MKL/oneDNN), or
# native: the one that this CPU's torch picks (what `python3 -c 'import torch;print(torch.backends.cpu.get_cpu_capability())'`
# prints), printed in lower case and nothing run when no command is given.
# A forced set above what the CPU has falls back to the CPU's best.
set -euo pipefail
isa=${1:?usage: scripts/with_isa.sh avx512|avx2|default|native [COMMAND ...]}
shift
case "$isa" in
  avx512) export ATEN_CPU_CAPABILITY=avx512 MKL_ENABLE_INSTRUCTIONS=AVX512 ONEDNN_MAX_CPU_ISA=AVX512_CORE ;;
  avx2) export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ;;
  default) export ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41 ;;
  native)
    if [ $# -eq 0 ]; then
      env -u ATEN_CPU_CAPABILITY ${PYTHON:-python3} -c 'import torch; print(torch.backends.cpu.get_cpu_capability().lower())'
      exit 0
    fi
    unset ATEN_CPU_CAPABILITY MKL_ENABLE_INSTRUCTIONS ONEDNN_MAX_CPU_ISA ;;
  *) echo "with_isa.sh: unknown instruction set '$isa' (avx512, avx2, default or native)" >&2; exit 2 ;;
esac
[ $# -eq 0 ] && { echo "with_isa.sh: no command to run" >&2; exit 2; }
exec "$@"
