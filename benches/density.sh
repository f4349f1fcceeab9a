#!/usr/bin/env bash
# Camera density: N file cameras of real 1080p15 H.264 (a keyframe every second),
# replayed in real time, scaled to 640x360 for a model sampling 1 frame/s each, through
# `defectflow run` in each decode mode, against the same count of bare GStreamer
# pipelines decoding every frame as defectflow's cameras did before decode modes
# (`decodebin ! videoconvert ! videoscale ! RGBP`), in one run. Prints per mode: wall
# time against the clip's length (over it: the cameras fell behind real time), CPU
# seconds, CPU per camera, peak resident memory, and cameras that did not end.
#
#   bash benches/density.sh 16 32 64
#
# Extra settings through the environment: SECONDS_LONG (12, the clip), MODES ("all
# keyframes auto"), MAX_FPS (1.0), STALL_MS (5000), BARE (1: also the bare peer),
# DEFECTFLOW (a built binary; default: the release build, built here).
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("$@")
[ $# -eq 0 ] && counts=(16)
clip_s="${SECONDS_LONG:-12}"
if [ -z "${DEFECTFLOW:-}" ]; then
  cargo build --release --bin defectflow
  DEFECTFLOW="${CARGO_TARGET_DIR:-target}/release/defectflow"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Plant footage at 1080p, re-encoded as cameras encode (4:2:0, 4 Mbit/s, a keyframe every 15 frames).
"$DEFECTFLOW" synth --out "$work/synth" --cameras 1 --seconds "$clip_s" --width 1920 --height 1080 > /dev/null
gst-launch-1.0 -q filesrc location="$work/synth/cam-01.mp4" ! qtdemux ! h264parse ! avdec_h264 ! videoconvert \
  ! video/x-raw,format=I420 ! x264enc speed-preset=veryfast key-int-max=15 bframes=0 bitrate=4000 ! h264parse ! mp4mux \
  ! filesink location="$work/cam1080.mp4"

measure() { # label, cameras, command...
  local label=$1 n=$2
  shift 2
  /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$@" > "$work/out.log" 2>&1 || true
  read -r wall user sys rss < "$work/time"
  local ended
  ended=$(grep -cE '^c[0-9]+ +[0-9]+ ended' "$work/out.log" || true)
  [ "$label" = bare ] && ended="-"
  awk -v l="$label" -v n="$n" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v c="$clip_s" -v e="$ended" \
    'BEGIN { printf "%-10s %8d %9.1f %7.1f %10.1f %13.3f %9.0f %8s\n", l, n, w, c, u + s, (u + s) / n / c, r / 1024, e }'
}

printf "%-10s %8s %9s %7s %10s %13s %9s %8s\n" mode cameras "wall s" "clip s" "CPU s" "cores/camera" "peak MiB" ended
for n in "${counts[@]}"; do
  for mode in ${MODES:-all keyframes auto}; do
    config="$work/run-$mode-$n.toml"
    printf '[runtime]\nworkers = 2\n' > "$config"
    for i in $(seq 1 "$n"); do
      printf '[[cameras]]\nid = "c%02d"\nurl = "file://%s"\nwidth = 640\nheight = 360\nmax_fps = %s\nrealtime = true\ndecode = "%s"\n[cameras.reconnect]\nstall_timeout_ms = %s\n' \
        "$i" "$work/cam1080.mp4" "${MAX_FPS:-1.0}" "$mode" "${STALL_MS:-5000}" >> "$config"
    done
    measure "$mode" "$n" "$DEFECTFLOW" run --config "$config" --out "$work/out-$mode-$n"
  done
  if [ "${BARE:-1}" = 1 ]; then
    cat > "$work/bare.sh" <<EOF
for i in \$(seq 1 $n); do
  gst-launch-1.0 -q filesrc location=$work/cam1080.mp4 ! decodebin ! videoconvert ! videoscale \
    ! video/x-raw,format=RGBP,width=640,height=360 ! fakesink sync=true &
done
wait
EOF
    # Peak memory of the bare peer is of its largest process, not of all of them.
    measure bare "$n" bash "$work/bare.sh"
  fi
done
