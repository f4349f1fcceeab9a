# Sourced by the end-to-end bench scripts: builds the release binary (`$bin`) and starts
# tansu on a free port of 127.0.0.1 (`$port`, stopped on exit) with the output topics.
# BUILD_FLAGS are added to the build (e.g. `--features mimalloc`).
TANSU="${DEFECTFLOW_TANSU:-$HOME/.cache/defectflow/bin/tansu}"
PYTHON="${DEFECTFLOW_ANALYTICS_PYTHON:-$HOME/.cache/defectflow/venv/bin/python}"
# shellcheck disable=SC2086
cargo build --release --bin defectflow ${BUILD_FLAGS:-}
bin="${CARGO_TARGET_DIR:-target}/release/defectflow"

port=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$TANSU" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ > /dev/null 2>&1 &
broker=$!
trap 'kill "$broker" 2>/dev/null || true' EXIT
"$PYTHON" tests/support/kafka_client.py create "127.0.0.1:$port" \
  defectflow.work-orders:3 defectflow.alerts:1 defectflow.parts-staging:1 defectflow.dead-letter:1 defectflow.progress:1
