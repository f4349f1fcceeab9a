#!/usr/bin/env bash
# Soak: `defectflow bench` (release build) with 8 synthetic cameras into a real
# Kafka-protocol broker for 30 minutes, sampling resident memory, CPU, throughput and
# latency every minute. Writes the samples (JSON lines), the closing report and a
# chart (soak.png) to OUT (default target/soak). Not part of CI.
#
#   bash benches/soak.sh                 # 8 cameras, 15 fps, the model at 7.5 fps, 1800 s
#   SOAK_SECONDS=600 CAMERAS=4 MAX_FPS= bash benches/soak.sh
#   WRAP="heaptrack -o target/soak/heap" bash benches/soak.sh   # under a heap profiler
#   BUILD_FLAGS="--features mimalloc" bash benches/soak.sh       # with mimalloc
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-target/soak}"
mkdir -p "$out"
source benches/with_broker.sh

args=(--cameras "${CAMERAS:-8}" --fps "${FPS:-15}" --seconds "${SOAK_SECONDS:-1800}" -w "${WORKERS:-2}"
  --brokers "127.0.0.1:$port" --sample-s "${SAMPLE_S:-60}" --json)
max_fps="${MAX_FPS-7.5}"
[ -n "$max_fps" ] && args+=(--max-fps "$max_fps")
echo "defectflow bench ${args[*]}"
# The result is the one JSON line of the standard output (a wrapper may print more).
# shellcheck disable=SC2086
${WRAP:-} "$bin" bench "${args[@]}" 2> >(tee "$out/log.txt" >&2) | grep '^{' > "$out/result.json"
"$PYTHON" benches/soak_report.py "$out/result.json" "$out/soak.png"
