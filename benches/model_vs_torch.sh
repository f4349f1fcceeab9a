#!/usr/bin/env bash
# Defect network inference, burn (CPU backend) against PyTorch on the CPU, in one run:
# the criterion bench, then the PyTorch peer, then the ratios of median frames/s.
# PyTorch comes from a venv (DEFECTFLOW_TORCH_VENV, default ~/.cache/defectflow/torch-venv),
# made on first use with `pip install torch`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${DEFECTFLOW_TORCH_VENV:-$HOME/.cache/defectflow/torch-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch
fi
threads="${THREADS:-2}"
cargo bench --bench inference -- --noplot 2>&1 | tee /tmp/defectflow-inference-bench.txt
RAYON_NUM_THREADS="$threads" "$venv/bin/python" benches/torch_defectnet.py --threads "$threads" 2>/dev/null \
  | tee /tmp/defectflow-torch-bench.jsonl
python3 - <<'PY'
import json, re
text = open("/tmp/defectflow-inference-bench.txt").read()
burn = {}  # (path, batch) -> frames/s
for path, batch, unit_value, unit in re.findall(r"defect_net_640x360/(burn_\w+)/(\d+)\s+time:.*?\n\s*thrpt:\s+\[\S+\s+\S+\s+([0-9.]+)\s+([KM]?elem/s)", text):
    scale = {"elem/s": 1, "Kelem/s": 1e3, "Melem/s": 1e6}[unit]
    burn[(path, int(batch))] = float(unit_value) * scale
flops = re.search(r"= ([0-9.]+) GFLOP per", text)
for line in open("/tmp/defectflow-torch-bench.jsonl"):
    peer = json.loads(line)
    b = peer["batch"]
    for (path, batch), fps in sorted(burn.items()):
        if batch != b or path == "burn_cuda":
            continue
        gflops = fps * float(flops.group(1)) if flops else float("nan")
        print(f"batch {b}: {path} {fps:.1f} frames/s ({gflops:.1f} GFLOP/s), "
              f"PyTorch {peer['frames_per_s']:.1f} frames/s, ratio {path}/PyTorch {fps / peer['frames_per_s']:.2f}")
PY
