#!/usr/bin/env bash
# One device call (about 9 minutes): the GPU rows of the README's benchmark tables.
set -o pipefail
source scripts/gpu/setup.sh
t0=$(date +%s)
nvidia-smi -L
timeout 300 python3 benchmarks/eigensolvers.py --model C1 --dataset cifar10-jpeg --data-root .gpudata --device cuda \
    --samples 10000 --epochs 10 --results /tmp/eigres 2>&1 | grep -v "it/s\|epoch/s" | tee "$OUT/eigensolvers.md"
timeout $(( 560 - $(date +%s) + t0 )) python3 benchmarks/measurements.py --model C1 --dataset cifar10-jpeg \
    --data-root .gpudata --device cuda --epochs 3 --samples 5000 --chunks 1024 8192 --curvature-samples 1000 \
    --concurrent 6 2>&1 | grep -v "it/s" | tee "$OUT/measurements.md"
echo "total: $(( $(date +%s) - t0 )) s"
