#!/usr/bin/env bash
# The semi-supervised factory on the built-in grains and on the stardist nuclei image, as measured
# for bench/results/factory_{grains,nuclei}.{json,md}. Two processes, one thread each (2 cores).
# Needs: pip install --no-deps stardist==0.9.2 (the nuclei image and its mask ship in the wheel).
# Usage: bash bench/bench_factory.sh OUT   (about 2 x 40 min for budget 8, 5 seeds; then 32 + all)
set -euo pipefail
OUT=${1:?usage: bench_factory.sh OUT}
PF=${PAIRFORGE:-pairforge}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
[ -f "$OUT/grains/data/dataset.yaml" ] || $PF data grains "$OUT/grains/data" --preset demo
[ -f "$OUT/nuclei/data/dataset.yaml" ] || $PF data nuclei "$OUT/nuclei/data"
[ -f "$OUT/grains/runs/image/model/pairforge.json" ] || $PF train demo-image \
  --out "$OUT/grains/runs/image" --set "data.path=$OUT/grains/data" --set optim.max_minutes=8 --set seed=0
common=(--pseudo-crops 1024 --distill-epochs 5)
grains() { $PF factory --data "$OUT/grains/data" --image-run "$OUT/grains/runs/image" "${common[@]}" --out "$OUT/grains" "$@"; }
nuclei() { $PF factory --data "$OUT/nuclei/data" --image-minutes 8 --set data.crop_size=64 "${common[@]}" --out "$OUT/nuclei" "$@"; }
(grains --labels 8 --seeds 0,1,2,3,4 && grains --labels 32,all --seeds 0,1,2) > "$OUT/grains.log" 2>&1 &
(nuclei --labels 8 --seeds 0,1,2,3,4 && nuclei --labels 32,all --seeds 0,1,2) > "$OUT/nuclei.log" 2>&1 &
wait
for d in grains nuclei; do
  cp "$OUT/$d/eval/factory/factory.json" "bench/results/factory_$d.json"
  cp "$OUT/$d/eval/factory/factory.md" "bench/results/factory_$d.md"
  cp "$OUT/$d/factory_run.json" "bench/results/factory_run_$d.json"
done
