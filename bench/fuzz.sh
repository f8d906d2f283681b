#!/usr/bin/env bash
# Runs every fuzz target (fuzz/*_fuzz.cpp) for a million inputs, starting from a copy of its
# committed corpus (fuzz/corpus/TARGET/), and prints per target the inputs run, the rate and
# whether it crashed. Crashing inputs land in build-fuzz/artifacts/, logs in build-fuzz/logs/.
#   bench/fuzz.sh [TARGET...]      (FUZZ_RUNS=N to run another count)
# Minimise a crash with: build-fuzz/TARGET -minimize_crash=1 -runs=10000 CRASH_FILE
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
runs=${FUZZ_RUNS:-1000000}
fuzz/build.sh || exit 1

# Longest input per target: room for a few tensors, a config or a tokenizer folder, a prompt.
declare -A max_len=(
  [safetensors_header_fuzz]=8192 [json_config_fuzz]=4096 [clip_tokenizer_files_fuzz]=8192
  [clip_tokenizer_encode_fuzz]=1024 [toml_config_fuzz]=4096 [lora_keys_fuzz]=256
  [metadata_jsonl_fuzz]=2048 [parquet_schema_fuzz]=8192
)
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(safetensors_header_fuzz json_config_fuzz
  clip_tokenizer_files_fuzz clip_tokenizer_encode_fuzz toml_config_fuzz lora_keys_fuzz
  metadata_jsonl_fuzz parquet_schema_fuzz)

# tmpfs when there is one: the targets write their input to a file on every run.
scratch=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export SDTUNE_FUZZ_TMP=$scratch
# A 1 MiB stack (the default is 8): unbounded recursion then shows with inputs of a few KB.
ulimit -s 1024
mkdir -p build-fuzz/artifacts build-fuzz/logs
printf '%-28s %10s %8s %8s  %s\n' target runs exec/s seconds result
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$scratch/corpus/$t"
  cp fuzz/corpus/"$t"/* "$scratch/corpus/$t/"
  log=build-fuzz/logs/$t.log
  start=$(date +%s)
  nice -n 10 build-fuzz/"$t" -runs="$runs" -max_len="${max_len[$t]:-4096}" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=build-fuzz/artifacts/"$t"- \
    "$scratch/corpus/$t" >"$log" 2>&1
  rc=$?
  seconds=$(($(date +%s) - start))
  done_runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  if [[ $rc -eq 0 ]]; then
    result=ok
  else
    failed=1
    artifact=$(sed -n 's/.*Test unit written to //p' "$log" | tail -n 1)
    result="CRASHED (exit $rc): $(grep -m1 -E 'ERROR|runtime error|fuzz property failed' "$log")"
    result+="${artifact:+; input: $artifact}"
  fi
  printf '%-28s %10s %8s %8s  %s\n' "$t" "${done_runs:-?}" "${rate:-?}" "$seconds" "$result"
done
exit $failed
