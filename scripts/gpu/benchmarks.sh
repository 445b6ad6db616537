#!/usr/bin/env bash
# One device call (about 9 minutes): the GPU rows of the README's benchmark tables. Tables go to
# $OUT/*.md; progress bars and errors to $OUT/*.log (the last lines of each are printed).
set -o pipefail
source scripts/gpu/setup.sh
t0=$(date +%s)
nvidia-smi -L
timeout 300 python3 benchmarks/eigensolvers.py --model C1 --dataset cifar10-jpeg --data-root .gpudata --device cuda \
    --samples 10000 --epochs 10 --results /tmp/eigres 2>"$OUT/eigensolvers.log" | tee "$OUT/eigensolvers.md"
tail -c 600 "$OUT/eigensolvers.log" | tr '\r' '\n' | tail -3
timeout $(( 560 - $(date +%s) + t0 )) python3 benchmarks/measurements.py --model C1 --dataset cifar10-jpeg \
    --data-root .gpudata --device cuda --epochs 3 --samples 5000 --chunks 1024 8192 --curvature-samples 1000 \
    --concurrent 6 2>"$OUT/measurements.log" | tee "$OUT/measurements.md"
tail -c 600 "$OUT/measurements.log" | tr '\r' '\n' | tail -3
echo "total: $(( $(date +%s) - t0 )) s"
