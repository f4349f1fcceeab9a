#!/usr/bin/env bash
# Fuzzes every parser of outside input (Kafka input messages, config, reference data,
# YOLO label files) with cargo-fuzz for a bounded time each, growing the corpus in
# fuzz/corpus/<target>. A crash is saved under fuzz/artifacts/<target>/: fix it, copy
# the input to fuzz/regressions/<target>/, and the test suite replays it from then on
# (tests/faults/fuzz.rs). Needs a nightly toolchain (the sanitizer).
#
#   bash scripts/fuzz.sh                 # 120 s for each target
#   bash scripts/fuzz.sh 600 config      # 10 minutes of one target
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-120}"
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(kafka_input config reference yolo_labels)
command -v cargo-fuzz > /dev/null || cargo +nightly install cargo-fuzz --locked
target_dir="${FUZZ_TARGET_DIR:-$HOME/.cache/defectflow/fuzz-target}"
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/regressions/$t"
  echo "== $t for ${seconds}s"
  cargo +nightly fuzz run --target-dir "$target_dir" "$t" "fuzz/corpus/$t" "fuzz/regressions/$t" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=4096
  # Keeps the corpus small: only inputs that add coverage.
  cargo +nightly fuzz cmin --target-dir "$target_dir" "$t" "fuzz/corpus/$t"
done
