#!/usr/bin/env bash
# One harvest-and-retrain round on cameras the model never trained on, measured on
# held-out footage of the same cameras (docs/model.md, "One round of the loop, measured").
#
# For each camera scene: a harvest period (3 clean clips and one with a crack) and a
# held-out period (3 clean clips, two cracks, two corrosions), other nuisances and
# defects on the same view. The shipped model runs the harvest period; a reviewer who
# knows the ground truth closes its false work orders as false positives and completes
# the found defects (`eval --verdicts`); `harvest --events` turns that into training
# frames; the model is fine-tuned on generated frames and the harvest (with
# distillation); the evaluation gate judges it on 2,400 generated held-out frames and
# the harvest; both models run the held-out period with the model alone deciding
# (`commission_s = 0`) and with the default config.
#   benches/unseen/retrain-round.sh [WORK_DIR=unseen-round] [SCENES="11 16"]
set -euo pipefail
cd "$(dirname "$0")/../.."
work="${1:-unseen-round}"
scenes="${2:-11 16}"
python="${DEFECTFLOW_ANALYTICS_PYTHON:-python3}"
cargo build --quiet --release --bin defectflow
bin="${CARGO_TARGET_DIR:-target}/release/defectflow"
mkdir -p "$work"
printf '[anomaly]\ncommission_s = 0\n' > "$work/model-alone.toml"

harvest_dirs=()
heldout_dirs=()
for s in $scenes; do
    "$python" benches/unseen/render.py --out "$work/harvest-$s" --seed $((s * 1000 + 1)) --scene "$s" \
        --clip "cam$s-h1:120:5:none:0" --clip "cam$s-h2:120:5:none:0" --clip "cam$s-h3:120:5:none:0" \
        --clip "cam$s-hd:120:10:crack:50"
    "$python" benches/unseen/render.py --out "$work/heldout-$s" --seed $((s * 1000 + 3)) --scene "$s" \
        --clip "cam$s-v1:120:5:none:0" --clip "cam$s-v2:120:5:none:0" --clip "cam$s-v3:120:5:none:0" \
        --clip "cam$s-vc1:120:10:crack:45" --clip "cam$s-vc2:120:10:crack:55" \
        --clip "cam$s-vr1:120:10:corrosion:50" --clip "cam$s-vr2:120:10:corrosion:40"
    harvest_dirs+=("$work/harvest-$s")
    heldout_dirs+=("$work/heldout-$s")
done
# One footage folder of several: footage.json naming each clip by its full path.
combine() {
    local out="$1"
    shift
    "$python" - "$out" "$@" <<'EOF'
import json, os, sys
out, clips = sys.argv[1], []
for folder in sys.argv[2:]:
    for clip in json.load(open(os.path.join(folder, "footage.json")))["clips"]:
        clip["file"] = os.path.join(os.path.abspath(folder), clip["file"])
        clips.append(clip)
os.makedirs(out, exist_ok=True)
json.dump({"clips": clips}, open(os.path.join(out, "footage.json"), "w"), indent=1)
EOF
}
combine "$work/harvest" "${harvest_dirs[@]}"
combine "$work/heldout" "${heldout_dirs[@]}"

"$bin" eval --footage "$work/harvest" --settings "$work/model-alone.toml" --out "$work/harvest-run" \
    --json "$work/harvest-run.json" --verdicts "$work/verdicts.jsonl" > "$work/harvest-run.txt"
"$bin" harvest --audit "$work/harvest-run/audit" --events "$work/verdicts.jsonl" --out "$work/harvested" --json \
    > "$work/harvested.json"
"$bin" synth --format yolo --out "$work/generated" --seed 101 --cameras 80 --defect-free 10 --every 10 > /dev/null
"$bin" synth --format yolo --out "$work/generated-holdout" --seed 2025 --cameras 48 --defect-free 12 --every 6 > /dev/null
"$bin" train --init models/weights --data "$work/generated,$work/harvested" --out "$work/candidate" --force \
    --steps 800 --learning-rate 5e-4 --mine-every 200 --distill 1
# The gate's verdict is recorded either way; the round goes on to measure both models.
"$bin" promote --candidate "$work/candidate" --current models/weights --heldout "$work/generated-holdout" \
    --harvest "$work/harvested" --json "$work/promotion.json" || true

for model in shipped candidate; do
    dir=models/weights
    [ "$model" = candidate ] && dir="$work/candidate"
    "$bin" eval --footage "$work/heldout" --model "$dir" --settings "$work/model-alone.toml" \
        --json "$work/heldout-$model-alone.json" > "$work/heldout-$model-alone.txt"
    "$bin" eval --footage "$work/heldout" --model "$dir" --json "$work/heldout-$model-default.json" \
        > "$work/heldout-$model-default.txt"
done
"$python" - "$work" <<'EOF'
import json, sys
work = sys.argv[1]
for config in ("alone", "default"):
    for model in ("shipped", "candidate"):
        report = json.load(open(f"{work}/heldout-{model}-{config}.json"))
        by_camera = {}
        for order in report["false_orders"]:
            scene = order["camera_id"].split("-")[0]
            by_camera[scene] = by_camera.get(scene, 0) + 1
        found = sum(d["found"] for d in report["defects"])
        print(f"{config:8} {model:10} defects found {found} of {len(report['defects'])}, "
              f"false work orders {report['false_work_orders']} {dict(sorted(by_camera.items()))}")
EOF
