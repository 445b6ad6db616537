#!/usr/bin/env bash
# One device call: one plan of the paper profile (params/paper.yaml, `plans:`; `hessbatch plan` lists
# them in priority order with what each still lacks). Page after page it trains and measures into a
# fresh store and rewrites $OUT/tidy.tgz and $OUT/plan.json, so a call stopped at its limit keeps
# every finished page.
#   PLAN=c1-table1 bash scripts/gpu/plan.sh
# (WORKERS, DEVICE, GPUDATA default to 6, cuda and .gpudata; BUDGET to the plan's; DRY=1 runs it at toy
# size, as the test suite does on generated data.)
# A plan too long for one call is split by its parameters: SET holds --set values separated by ';',
#   PLAN=c1-table1 SET='batch_sizes=[16, 32]' bash scripts/gpu/plan.sh
# computes only those batch sizes' runs and measurements; the whole page renders once every part is in.
# Back here: hessbatch plan --unpack <files_at>   (then commit paper-results/ and build the paper book)
set -o pipefail
source scripts/gpu/setup.sh
sets=()
IFS=';' read -ra parts <<< "${SET:-}"
for s in "${parts[@]}"; do
  [ -n "${s// }" ] && sets+=(--set "$s")
done
python3 -m hessbatch.paper.cli plan "${PLAN:?set PLAN}" --profile paper --device "${DEVICE:-cuda}" \
    --data-root "${GPUDATA:-.gpudata}" --workers "${WORKERS:-6}" --out "${OUT:?set OUT}" --no-progress \
    ${BUDGET:+--budget "$BUDGET"} ${DRY:+--dry-run} "${sets[@]}" 2>&1 | tee "$OUT/plan.log"
