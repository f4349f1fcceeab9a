#!/usr/bin/env bash
# The int8 path against the fp32 packed path and ONNX Runtime (fp32 and its own int8
# quantisation of the same network), at batch 1 on a 640x360 frame, in one run: the
# criterion bench, then the ONNX Runtime peer, then the ratios of median frames/s.
# ONNX Runtime comes from a venv (DEFECTFLOW_ORT_VENV, default
# ~/.cache/defectflow/ort-venv), made on first use with `pip install onnxruntime onnx numpy`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${DEFECTFLOW_ORT_VENV:-$HOME/.cache/defectflow/ort-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import onnxruntime, onnx' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q onnxruntime onnx numpy
fi
threads="${THREADS:-2}"
cargo bench --bench inference -- --noplot 'defect_net_640x360/burn_(packed|int8)[a-z0-9_]*/1$' 2>&1 \
  | tee /tmp/defectflow-int8-bench.txt
"$venv/bin/python" benches/ort_defectnet.py --threads "$threads" 2>/dev/null | tee /tmp/defectflow-ort-bench.jsonl
python3 - <<'PY'
import json, re
text = open("/tmp/defectflow-int8-bench.txt").read()
ours = {}
for path, value, unit in re.findall(r"defect_net_640x360/(burn_\w+)/1\s+time:.*?\n\s*thrpt:\s+\[\S+\s+\S+\s+([0-9.]+)\s+([KM]?elem/s)", text):
    ours[path] = float(value) * {"elem/s": 1, "Kelem/s": 1e3, "Melem/s": 1e6}[unit]
peers = {p["peer"]: p["frames_per_s"] for p in map(json.loads, open("/tmp/defectflow-ort-bench.jsonl"))}
fp32 = ours.get("burn_packed")
for path, fps in sorted(ours.items()):
    line = f"{path}: {fps:.1f} frames/s"
    if fp32:
        line += f", {fps / fp32:.2f}x burn_packed"
    for peer, peer_fps in sorted(peers.items()):
        line += f", {fps / peer_fps:.2f}x {peer}"
    print(line)
for peer, fps in sorted(peers.items()):
    print(f"{peer}: {fps:.1f} frames/s")
PY
