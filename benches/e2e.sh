#!/usr/bin/env bash
# End-to-end benchmark: `defectflow bench` (release build) with N synthetic cameras
# through the whole graph into a real Kafka-protocol broker (tansu on 127.0.0.1),
# for each camera count given (default 2 4 6 8). Extra settings through the
# environment: FPS (15), MAX_FPS (unset: every frame to the model), BENCH_SECONDS (60),
# WORKERS (2), BENCH_ARGS (more `defectflow bench` options).
#
#   bash benches/e2e.sh 4 8
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ $# -eq 0 ] && counts=(2 4 6 8)
source benches/with_broker.sh

for n in "${counts[@]}"; do
  args=(--cameras "$n" --fps "${FPS:-15}" --seconds "${BENCH_SECONDS:-60}" -w "${WORKERS:-2}" --brokers "127.0.0.1:$port")
  [ -n "${MAX_FPS:-}" ] && args+=(--max-fps "$MAX_FPS")
  # More `defectflow bench` options, e.g. BENCH_ARGS="--source clip.mp4 --precision int8".
  read -r -a extra <<< "${BENCH_ARGS:-}"
  args+=("${extra[@]}")
  echo "== $n cameras"
  "$bin" bench "${args[@]}"
done
