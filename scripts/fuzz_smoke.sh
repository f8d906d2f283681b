#!/usr/bin/env bash
# The fuzz targets' quick pass for CI: builds build-fuzz/ (fuzz/build.sh), then replays each
# target's committed corpus (fuzz/corpus/TARGET/, regression inputs included) and runs 2000
# mutated inputs from it with a fixed seed. Exits non-zero when any input crashes a target; its
# log then names the input. bench/fuzz.sh is the long run.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzz/build.sh
# tmpfs when there is one: the targets write their input to a file on every run.
scratch=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p build-fuzz/artifacts
export SDTUNE_FUZZ_TMP=$scratch
# A 1 MiB stack (the default is 8): unbounded recursion then shows with inputs of a few KB.
ulimit -s 1024
failed=0
for dir in fuzz/corpus/*/; do
  t=$(basename "$dir")
  mkdir -p "$scratch/new/$t"
  # New inputs go to the scratch folder first in the list, never into the committed corpus.
  if nice -n 10 build-fuzz/"$t" -runs=0 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix=build-fuzz/artifacts/smoke-"$t"- "$dir" >"$scratch/$t.log" 2>&1 &&
    nice -n 10 build-fuzz/"$t" -runs=2000 -seed=1 -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix=build-fuzz/artifacts/smoke-"$t"- "$scratch/new/$t" "$dir" >>"$scratch/$t.log" 2>&1; then
    echo "fuzz smoke: $t ok ($(find "$dir" -type f | wc -l) corpus inputs)"
  else
    echo "fuzz smoke: $t CRASHED:"
    grep -E -A3 'ERROR|runtime error|fuzz property failed|Running:' "$scratch/$t.log" | tail -n 30
    failed=1
  fi
done
exit $failed
