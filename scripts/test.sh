#!/usr/bin/env bash
# Installs what is needed and runs the whole test suite: unit tests, doc tests and the
# end-to-end tests against real GStreamer pipelines and a real RTSP server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
# The RTSP test server needs Debian's python3 with PyGObject, not another python on PATH.
export DEFECTFLOW_PYTHON="${DEFECTFLOW_PYTHON:-/usr/bin/python3}"
# The Parquet audit log is read back by polars from the environment install.sh made.
export DEFECTFLOW_ANALYTICS_PYTHON="${DEFECTFLOW_ANALYTICS_PYTHON:-${DEFECTFLOW_VENV:-$HOME/.cache/defectflow/venv}/bin/python}"
# The Kafka-protocol broker the Kafka tests start (install.sh puts it there).
export DEFECTFLOW_TANSU="${DEFECTFLOW_TANSU:-${DEFECTFLOW_BIN:-$HOME/.cache/defectflow/bin}/tansu}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --doc 2>&1 | tee "$log"
cargo test --workspace --all-targets "$@" 2>&1 | tee -a "$log"
# One closing line for the whole suite.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"
