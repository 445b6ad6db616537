#!/usr/bin/env bash
# One device call (about 9 minutes): the GPU rows of the benchmark tables (book/benchmarks.md). Tables go to
# $OUT/*.md; progress bars and errors to $OUT/*.log (the last lines of each are printed).
# BENCH picks which, in order (default: training eigensolvers measurements); each has its own cap.
set -o pipefail
source scripts/gpu/setup.sh
t0=$(date +%s)
nvidia-smi -L
for b in ${BENCH:-training eigensolvers measurements}; do
  case $b in
    training)  # eager vs CUDA-graph epochs of C1, B = 16…2048, and the DataLoader baseline
      timeout 150 python3 benchmarks/training.py --device cuda --dataset cifar10-jpeg --data-root .gpudata \
          --batch-sizes 16,64,256,1024,2048 --repeats 1 --parallel 0 --timings none ;;
    eigensolvers)
      timeout 240 python3 benchmarks/eigensolvers.py --model C1 --dataset cifar10-jpeg --data-root .gpudata \
          --device cuda --samples 10000 --epochs 10 --results /tmp/eigres ;;
    measurements)
      timeout $(( 560 - $(date +%s) + t0 )) python3 benchmarks/measurements.py --model C1 --dataset cifar10-jpeg \
          --data-root .gpudata --device cuda --epochs 3 --samples 5000 --chunks 1024 8192 --curvature-samples 1000 \
          --concurrent 6 ;;
    *) echo "unknown benchmark $b (training, eigensolvers or measurements)" >&2; exit 2 ;;
  esac 2>"$OUT/$b.log" | tee "$OUT/$b.md"
  tail -c 600 "$OUT/$b.log" | tr '\r' '\n' | tail -3
done
echo "total: $(( $(date +%s) - t0 )) s"
