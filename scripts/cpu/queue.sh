#!/usr/bin/env bash
# The paper profile's CPU plans on every core: WORKERS processes (default 2) work through a list of
# calls of scripts/cpu/protocol.sh, one line each ("c1-table1-cpu 256", "c3-table4-cpu"), each taking the
# first line that is neither done nor being computed. A line is marked done when its call ends well;
# a failed one is left for the next start (its log says why). Stopped at any point, the script
# resumes where it was when started again: finished lines are skipped, and the run in progress
# resumes from its last epoch's checkpoint.
#   DATA=../shared/data bash scripts/cpu/queue.sh [LIST]        (default scripts/cpu/queue.txt)
#   NICE=19 setsid nohup ... &                                   (lowest priority, detached; see protocol.sh)
#   bash scripts/cpu/queue.sh --status [LIST]                    (each line: done, running, stopped, to do)
# STATE (default results/queue): each line's lock, log, done mark and progress bars (ID.events.jsonl,
# ID the line's words joined by '-'). Each worker's Hessian products may cache gradient graphs in
# 1/WORKERS of the usual half of the free memory (HESSBATCH_GRAPH_MEMORY), so that two measurements
# at once cannot run the machine out of memory.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
status=
[ "${1:-}" = --status ] && { status=1; shift; }
list=${1:-scripts/cpu/queue.txt}
[ -r "$list" ] || { echo "queue.sh: cannot read the list $list" >&2; exit 2; }
workers=${WORKERS:-2}
[[ $workers =~ ^[1-9][0-9]*$ ]] || { echo "queue.sh: WORKERS must be a positive integer, got '$workers'" >&2; exit 2; }
state=${STATE:-results/queue}
n=0
while IFS= read -r line || [ -n "$line" ]; do   # a line is a plan and batch sizes: names and numbers only
  n=$((n + 1))
  line=${line%%#*}
  [[ $line =~ ^[[:space:]a-z0-9-]*$ ]] || { echo "queue.sh: $list, line $n: only a plan's name and batch sizes, got '$line'" >&2; exit 2; }
done < "$list"
lines() {  # each line of the list as "ID<TAB>WORDS", without comments and blank lines
  local line words
  while read -r line; do
    read -r -a words <<< "${line%%#*}"
    [ ${#words[@]} -gt 0 ] && printf '%s\t%s\n' "$(IFS=-; echo "${words[*]}")" "${words[*]}"
  done < "$list"
  return 0
}
if [ -n "$status" ]; then
  while IFS=$'\t' read -r id words; do
    if [ -e "$state/$id.done" ]; then s=done
    elif [ -e "$state/$id.lock" ] && ! flock -n "$state/$id.lock" true; then s=running
    elif [ -e "$state/$id.log" ]; then s="stopped (failed or cut off; $state/$id.log)"
    else s="to do"; fi
    printf '%-24s %s\n' "$words" "$s"
  done < <(lines)
  exit 0
fi
: "${DATA:?set DATA: a folder holding mnist/MNIST/raw/*.gz and cifar10-jpeg/*.tar.gz}"
. scripts/cpu/priority.sh   # NICE
mkdir -p "$state" results/logs
export DATA
export HESSBATCH_GRAPH_MEMORY=${HESSBATCH_GRAPH_MEMORY:-$(awk "BEGIN { print 0.5 / $workers }")}
log() { echo "$(date -u '+%F %T') $*"; }

work() {  # work W: take lines until none is left to this worker
  local w=$1 id line failed=" " found rc words
  while :; do
    found=
    while IFS=$'\t' read -r id line; do
      [ -e "$state/$id.done" ] || [[ $failed == *" $id "* ]] && continue
      exec 9>> "$state/$id.lock"
      if flock -n 9; then found=1; break; fi   # held while its call runs, released if it dies
      exec 9>&-
    done < <(lines)
    read -r -a words <<< "$line"
    [ -n "$found" ] || { log "worker $w: nothing left"; return 0; }
    log "worker $w: ${words[*]}"
    if EVENTS="$state/$id.events.jsonl" bash scripts/cpu/protocol.sh "${words[@]}" \
        >> "$state/$id.log" 2>&1 < /dev/null; then
      touch "$state/$id.done"
      log "worker $w: ${words[*]} done"
    else
      rc=$?
      failed+="$id "
      log "worker $w: ${words[*]} failed (exit $rc); see $state/$id.log"
    fi
    exec 9>&-
  done
}

for w in $(seq "$workers"); do
  work "$w" &
done
wait
