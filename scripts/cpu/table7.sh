#!/usr/bin/env bash
# Table 7 at the paper's protocol on this machine's CPUs (the paper profile's plan m1-table7-cpu: every
# batch size trained to training loss 0.001, Hessians on 5,000-sample subsets), one batch size per call.
# Each finished batch size is merged into paper-results/ and committed at once, so an interruption
# loses at most the run in progress.
#   MNIST=../shared/data/mnist bash scripts/cpu/table7.sh [B ...]    (default: 64 128 256 512 1024 2048)
# MNIST holds MNIST/raw/*.gz (torchvision's layout); they are unpacked into the git-ignored data/.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
src=${MNIST:?set MNIST: a folder holding MNIST/raw/*.gz}
mkdir -p data/MNIST/raw
for f in "$src"/MNIST/raw/*.gz; do
  t="data/MNIST/raw/$(basename "${f%.gz}")"
  [ -s "$t" ] || gunzip -c "$f" > "$t"
done
# HESSBATCH: the command to run (default .venv/bin/hessbatch; may be a command line, e.g.
# "env PYTHONPATH=$PWD/lib python3 -m hessbatch.paper.cli" for a second checkout)
hb=${HESSBATCH:-.venv/bin/hessbatch}
for b in ${@:-64 128 256 512 1024 2048}; do
  out=$(mktemp -d)
  $hb plan m1-table7-cpu --set "batch_sizes=[$b]" --data-root data --out "$out" \
      --results "${STORE:-results/table7}" --no-progress
  $hb plan --unpack "$out"
  git add paper-results
  git commit -q -m "paper-results: Table 7 at the protocol on 2 CPU cores, B = $b" -- paper-results
  rm -rf "$out"
done
