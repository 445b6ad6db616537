#!/usr/bin/env bash
# A CPU plan of the paper profile, computed and committed. A batch-size sweep at the paper's protocol
# (c1-table1-cpu, c2-table1-cpu, m1-table7-cpu) goes one batch size per call of `hessbatch plan`: every
# batch size trained to training loss 0.001, then measured, and merged into paper-results/ and
# committed at once, so an interruption loses at most the run in progress, which resumes from its last
# epoch's checkpoint when the script runs again. Any other CPU plan (c3-table4-cpu, table8-cpu,
# c1-fig4-cpu) is one call: its runs trained, then measured, merged and committed.
#   DATA=../shared/data bash scripts/cpu/protocol.sh c1-table1-cpu [B ...]   (default: 16 32 ... 2048)
#   DATA=../shared/data bash scripts/cpu/protocol.sh c2-table1-cpu [B ...]   (default: 256 512 1024 2048)
#   DATA=../shared/data bash scripts/cpu/protocol.sh m1-table7-cpu [B ...]   (default: 64 128 ... 2048)
#   DATA=../shared/data bash scripts/cpu/protocol.sh c3-table4-cpu            (or table8-cpu, c1-fig4-cpu)
#   TRAIN_ONLY=1 ...: train only (measure with a later call); THREADS, MEASURE_THREADS: below
#   NICE=19, EVENTS=FILE: lowest priority (priority.sh); progress as JSON lines in FILE (below)
# scripts/cpu/queue.sh runs a list of such calls on every core.
# DATA holds MNIST/raw/*.gz (torchvision's layout; in DATA/mnist) and cifar10-jpeg/{train,test}.tar.gz;
# what a plan reads is copied into the git-ignored data/ (each file whole, by rename: two calls at once
# may copy it together).
# STORE: the result store with the runs' checkpoints (default results/store/PLAN, git-ignored): a working
# tree that carries over resumes its runs. A batch size whose every result is in paper-results/ is skipped.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
plans="c1-table1-cpu, c2-table1-cpu, m1-table7-cpu, c3-table4-cpu, table8-cpu or c1-fig4-cpu"
plan=${1:?name a plan: $plans}
shift
case $plan in
  c1-table1-cpu) default="16 32 64 128 256 512 1024 2048" ;;
  c2-table1-cpu) default="256 512 1024 2048" ;;
  m1-table7-cpu) default="64 128 256 512 1024 2048" ;;
  c3-table4-cpu|table8-cpu|c1-fig4-cpu)
    default=""
    [ $# -eq 0 ] || { echo "protocol.sh: $plan is not a batch-size sweep; it takes no batch sizes" >&2; exit 2; } ;;
  *) echo "protocol.sh: unknown plan $plan ($plans)" >&2; exit 2 ;;
esac
for b in "$@"; do
  [[ $b =~ ^[1-9][0-9]*$ ]] || { echo "protocol.sh: a batch size is a positive integer, got '$b'" >&2; exit 2; }
done
for v in THREADS MEASURE_THREADS; do
  [[ ${!v:-1} =~ ^[1-9][0-9]*$ ]] || { echo "protocol.sh: $v must be a positive integer, got '${!v}'" >&2; exit 2; }
done
. scripts/cpu/priority.sh   # NICE
src=${DATA:?set DATA: a folder holding mnist/MNIST/raw/*.gz and cifar10-jpeg/*.tar.gz}
case $plan in
  m1-table7-cpu)
    mkdir -p data/MNIST/raw
    for f in "$src"/mnist/MNIST/raw/*.gz; do
      t="data/MNIST/raw/$(basename "${f%.gz}")"
      [ -s "$t" ] || { gunzip -c "$f" > "$t.$$" && mv -f "$t.$$" "$t"; }
    done ;;
  *)
    mkdir -p data/cifar10-jpeg
    for p in train test; do
      t=data/cifar10-jpeg/$p.tar.gz
      [ -d "data/cifar10-jpeg/$p" ] || [ -s "$t" ] || { cp "$src/cifar10-jpeg/$p.tar.gz" "$t.$$" && mv -f "$t.$$" "$t"; }
    done ;;
esac
# HESSBATCH: the command to run (default .venv/bin/hessbatch; may be a command line, e.g.
# "env PYTHONPATH=$PWD/lib python3 -m hessbatch.paper.cli" for a second checkout)
hb=${HESSBATCH:-.venv/bin/hessbatch}
# EVENTS=FILE: each progress bar (epochs, Hessian-vector products) appends its state to FILE as JSON lines,
# which a log without bars lacks (`tail -f FILE` follows a measurement that takes hours).
[ -n "${EVENTS:-}" ] && export HESSBATCH_EVENTS=$EVENTS
# One thread per run (THREADS= another): a run's bits depend on its thread count (recorded in its
# result.json), so the long runs use a fixed one; two calls at once use two cores. MEASURE_THREADS=2:
# train first, then measure on two threads (a call alone on the machine: measurements take about as
# long as training, and this shortens their wait).
export OMP_NUM_THREADS=${THREADS:-1}
store=${STORE:-results/store/$plan}
# On any exit (a run finished, a call cut off by its time limit): record where the plan's runs stand in
# paper-results/_progress.yml, which the plan's pages show until every batch size is in.
trap '$hb plan "$plan" --record-progress --results "$store" > /dev/null || true' EXIT
# One call of `hessbatch plan`, then its results merged into paper-results/ and committed; calls that end
# at once (scripts/cpu/queue.sh) take turns, so that neither finds git's index locked.
compute() {  # compute MESSAGE [--set ...]
  local message=$1 out
  shift
  if [ -n "${TRAIN_ONLY:-}" ]; then
    $hb plan "$plan" --train-only "$@" --data-root data --results "$store" --no-progress
    return
  fi
  [ -z "${MEASURE_THREADS:-}" ] || $hb plan "$plan" --train-only "$@" --data-root data --results "$store" --no-progress
  out=$(mktemp -d)
  OMP_NUM_THREADS=${MEASURE_THREADS:-$OMP_NUM_THREADS} \
    $hb plan "$plan" "$@" --data-root data --out "$out" --results "$store" --no-progress
  (
    flock 9
    $hb plan --unpack "$out"
    git add paper-results
    git diff --cached --quiet -- paper-results || git commit -q -m "paper-results: $plan $message" -- paper-results
  ) 9> "$(git rev-parse --git-dir)/hessbatch-commit.lock"
  rm -rf "$out"
}
if [ -z "$default" ]; then
  compute "on 2 CPU cores"
  exit 0
fi
for b in ${@:-$default}; do
  compute "at the protocol on 2 CPU cores, B = $b" --set "batch_sizes=[$b]"
done
