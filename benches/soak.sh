#!/usr/bin/env bash
# Soak: `defectflow bench` (release build) with 8 synthetic cameras into a real
# Kafka-protocol broker for 30 minutes, sampling resident memory, throughput and
# latency every minute. Writes the samples (JSON lines), the closing report and a
# memory-curve PNG to OUT (default target/soak). Not part of CI.
#
#   bash benches/soak.sh                 # 8 cameras, 15 fps, the model at 7.5 fps, 1800 s
#   SOAK_SECONDS=600 CAMERAS=4 MAX_FPS= bash benches/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TANSU="${DEFECTFLOW_TANSU:-$HOME/.cache/defectflow/bin/tansu}"
PYTHON="${DEFECTFLOW_ANALYTICS_PYTHON:-$HOME/.cache/defectflow/venv/bin/python}"
out="${OUT:-target/soak}"
mkdir -p "$out"
cargo build --release --bin defectflow
bin="${CARGO_TARGET_DIR:-target}/release/defectflow"

port=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$TANSU" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ > /dev/null 2>&1 &
broker=$!
trap 'kill "$broker" 2>/dev/null || true' EXIT
"$PYTHON" tests/support/kafka_client.py create "127.0.0.1:$port" \
  defectflow.work-orders:3 defectflow.alerts:1 defectflow.parts-staging:1 defectflow.dead-letter:1 defectflow.progress:1

args=(--cameras "${CAMERAS:-8}" --fps "${FPS:-15}" --seconds "${SOAK_SECONDS:-1800}" -w "${WORKERS:-2}"
  --brokers "127.0.0.1:$port" --sample-s "${SAMPLE_S:-60}" --json)
max_fps="${MAX_FPS-7.5}"
[ -n "$max_fps" ] && args+=(--max-fps "$max_fps")
echo "defectflow bench ${args[*]}"
"$bin" bench "${args[@]}" > "$out/result.json" 2> >(tee "$out/log.txt" >&2)
"$PYTHON" benches/soak_report.py "$out/result.json" "$out/memory.png"
