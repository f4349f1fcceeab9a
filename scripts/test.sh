#!/usr/bin/env bash
# Installs what is needed and runs the whole test suite: unit tests, doc tests and the
# end-to-end tests against real GStreamer pipelines and a real RTSP server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# The RTSP test server needs Debian's python3 with PyGObject, not another python on PATH.
export DEFECTFLOW_PYTHON="${DEFECTFLOW_PYTHON:-/usr/bin/python3}"
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
