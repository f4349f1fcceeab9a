#!/usr/bin/env bash
# End-to-end benchmark: `defectflow bench` (release build) with N synthetic cameras
# through the whole graph into a real Kafka-protocol broker (tansu on 127.0.0.1),
# for each camera count given (default 2 4 6 8). Extra settings through the
# environment: FPS (15), MAX_FPS (unset: every frame to the model), BENCH_SECONDS (60),
# WORKERS (2).
#
#   bash benches/e2e.sh 4 8
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ $# -eq 0 ] && counts=(2 4 6 8)
TANSU="${DEFECTFLOW_TANSU:-$HOME/.cache/defectflow/bin/tansu}"
PYTHON="${DEFECTFLOW_ANALYTICS_PYTHON:-$HOME/.cache/defectflow/venv/bin/python}"
cargo build --release --bin defectflow
bin="${CARGO_TARGET_DIR:-target}/release/defectflow"

port=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$TANSU" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ > /dev/null 2>&1 &
broker=$!
trap 'kill "$broker" 2>/dev/null || true' EXIT
"$PYTHON" tests/support/kafka_client.py create "127.0.0.1:$port" \
  defectflow.work-orders:3 defectflow.alerts:1 defectflow.parts-staging:1 defectflow.dead-letter:1 defectflow.progress:1

for n in "${counts[@]}"; do
  args=(--cameras "$n" --fps "${FPS:-15}" --seconds "${BENCH_SECONDS:-60}" -w "${WORKERS:-2}" --brokers "127.0.0.1:$port")
  [ -n "${MAX_FPS:-}" ] && args+=(--max-fps "$MAX_FPS")
  echo "== $n cameras"
  "$bin" bench "${args[@]}"
done
