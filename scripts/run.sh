#!/usr/bin/env bash
# Installs what is needed, builds defectflow and runs the demo plant.
# Extra arguments go to `defectflow run` (for example `--duration-s 60`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
cargo build --bin defectflow
# The demo starts from a clean slate each time (a deployment's output folder keeps its
# state across restarts: docs/deploy.md).
rm -rf out/demo
exec "${CARGO_TARGET_DIR:-target}/debug/defectflow" run --config examples/demo-plant/defectflow.toml "$@"
