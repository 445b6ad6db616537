#!/usr/bin/env bash
# One device call: compute some chapters of the paper profile, then bring their tidy results
# (no weights) back through $OUT. Weights cannot come back, so a chapter must train and measure
# within one call; `compute` resumes from paper-results/ for everything already there.
#   CHAPTERS=03-dynamics,05-adversarial-training BUDGET=540 bash scripts/gpu/compute.sh
# (WORKERS, DEVICE and RESULTS default to 6, cuda and paper-results.)
# Back here: tar xzf <files_at>/tidy.tgz -C paper-results   (then commit paper-results/)
set -o pipefail
source scripts/gpu/setup.sh
t0=$(date +%s)
timeout "${BUDGET:-540}" python3 -m hessbatch.paper.cli compute --profile paper --device "${DEVICE:-cuda}" \
    --data-root .gpudata --results "${RESULTS:-paper-results}" --workers "${WORKERS:-6}" --chapters "${CHAPTERS:?set CHAPTERS}" --no-progress 2>&1 \
    | grep -v "it/s\|s/it\|run/s\|s/run\|epoch/s\|s/epoch" | tail -40 | tee "$OUT/compute.log"
echo "compute: $(( $(date +%s) - t0 )) s"
rm -rf /tmp/tidy && python3 -m hessbatch.paper.cli export --results "${RESULTS:-paper-results}" /tmp/tidy && tar czf "$OUT/tidy.tgz" -C /tmp/tidy .
