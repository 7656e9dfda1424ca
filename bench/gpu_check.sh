#!/usr/bin/env bash
# One-GPU check of the GPU presets (grains-64, grains-mask-64, grains-sdm-64, grains-sr-256):
# each trains a short fixed number of steps with bf16, then samples, generates two-stage + SR
# pairs, fits a head and runs `seg predict` on a full-size 1270 x 10960 measurement. Prints
# img/s, s per sample, peak GPU memory and any error per step, ending in one summary table.
# Installs nothing. Without a CUDA GPU it stops at once with exit code 2.
#
#   bash bench/gpu_check.sh [OUT] [STEPS]      (defaults: /tmp/pairforge-gpu-check, 60 steps)
#
# Every step runs under `timeout` (STEP_TIMEOUT s, default 90) so the whole check stays within
# about 8 minutes; a step that fails or times out is reported and the check goes on.
set -uo pipefail
OUT=${1:-/tmp/pairforge-gpu-check}
STEPS=${2:-60}
STEP_TIMEOUT=${STEP_TIMEOUT:-90}
PF=${PAIRFORGE:-pairforge}
PY=${PYTHON:-python3}

if ! command -v "$PF" >/dev/null 2>&1; then
  echo "error: '$PF' not found; activate the pairforge venv or set PAIRFORGE=/path/to/pairforge" >&2
  exit 2
fi
if ! timeout 60 "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"; then
  echo "error: no CUDA GPU visible to torch (torch.cuda.is_available() is False); run" \
       "bench/gpu_check.sh on a machine with one CUDA GPU" >&2
  exit 2
fi
mkdir -p "$OUT"
ROWS=()

peak_start() {  # sample GPU memory in the background while a step runs
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$OUT/mem.log" 2>/dev/null &
  MEM_PID=$!
}
peak_stop() {
  kill "$MEM_PID" 2>/dev/null; wait "$MEM_PID" 2>/dev/null
  sort -n "$OUT/mem.log" 2>/dev/null | tail -1
}
step() {  # step NAME COUNT UNIT CMD...: run CMD, time it, record rate and peak memory
  local name=$1 count=$2 unit=$3; shift 3
  echo "== $name: $*"
  peak_start
  local t0; t0=$(date +%s.%N)
  timeout "$STEP_TIMEOUT" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local t1; t1=$(date +%s.%N)
  local peak; peak=$(peak_stop)
  local secs; secs=$("$PY" -c "print($t1 - $t0)")
  local rate="-"
  if [ "$rc" = 0 ] && [ "$count" != 0 ]; then
    rate=$(printf "%.3f s/%s" "$("$PY" -c "print($secs / $count)")" "$unit")
  fi
  local status=ok
  [ "$rc" = 124 ] && status="timeout after ${STEP_TIMEOUT}s"
  [ "$rc" != 0 ] && [ "$rc" != 124 ] && status="error rc=$rc: $(grep -m1 -i 'error' "$OUT/$name.log" | cut -c1-80)"
  ROWS+=("$(printf '| %-22s | %8.1f | %-16s | %8s | %s |' "$name" "$secs" "$rate" "${peak:--}" "$status")")
}
train_rate() {  # images/s of a run's last logged step
  tail -1 "$OUT/runs/$1/metrics.jsonl" 2>/dev/null | "$PY" -c \
    "import json,sys; print(round(json.loads(sys.stdin.read())['images_per_s'], 1))" 2>/dev/null || echo -
}

step data 0 - "$PF" data grains "$OUT/data" --preset demo
"$PY" - "$OUT/full" <<'EOF' >"$OUT/full.log" 2>&1 || echo "error: could not write the full-size measurement (see $OUT/full.log)"
import sys
import numpy as np
from pairforge.data.grain_surface import generate_measurement, seed_sequence
from pairforge.data.grains import PRESETS, grains_spec
from pairforge.data.writer import DatasetWriter
layout = PRESETS["full"]
image, mask = generate_measurement(layout.height, layout.width, None, (*seed_sequence(0), 0))
with DatasetWriter(sys.argv[1], grains_spec("demo-grains")) as writer:
    writer.add("m000", image, mask.astype(np.int64), split="test")
EOF

for preset in grains-64 grains-mask-64 grains-sdm-64 grains-sr-256; do
  step "train $preset" "$STEPS" step "$PF" train "$preset" --out "$OUT/runs/$preset" \
    --set "data.path=$OUT/data" --set "optim.max_steps=$STEPS" --set precision=bf16 \
    --set log.sample_every=0 --set "log.checkpoint_every=$STEPS" --set optim.warmup_steps=10
  ROWS+=("|   $preset images/s: $(train_rate "$preset") | | | | |")
done
step "sample grains-64" 16 sample "$PF" sample "$OUT/runs/grains-64" --n 16 --bf16 --device cuda \
  --out "$OUT/samples"
step "two-stage + SR" 8 pair "$PF" generate --pipeline two-stage --mask-run "$OUT/runs/grains-mask-64" \
  --sdm-run "$OUT/runs/grains-sdm-64" --sr "$OUT/runs/grains-sr-256" --n 8 --bf16 --device cuda \
  --out "$OUT/pairs"
step "seg fit (8 tiles)" 0 - "$PF" seg fit --run "$OUT/runs/grains-64" --data "$OUT/data" --labels 8 \
  --out "$OUT/head" --device cuda
step "seg predict full" 1 measurement "$PF" seg predict "$OUT/head" --data "$OUT/full" \
  --out "$OUT/pred" --device cuda

echo
echo "pairforge GPU check: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1), $STEPS training steps per preset"
echo "| step                   |  seconds | rate             | peak MiB | status |"
echo "|---|---:|---|---:|---|"
printf '%s\n' "${ROWS[@]}"
echo "Logs: $OUT/*.log. Not covered: multi-GPU DDP (needs 2+ GPUs: accelerate launch --multi_gpu)."
