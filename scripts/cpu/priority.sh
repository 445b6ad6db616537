# Sourced by protocol.sh and queue.sh. NICE=19: run at the lowest priority beside other work. Under
# Linux's autogroups `nice` orders only the processes of one autogroup, so a script that leads its own
# (started with `setsid`) also sets the autogroup's niceness; one started from a terminal leaves the
# terminal's autogroup as it is.
if [ -n "${NICE:-}" ]; then
  [[ $NICE =~ ^-?[0-9]+$ ]] || { echo "$(basename "$0"): NICE must be an integer, got '$NICE'" >&2; exit 2; }
  renice -n "$NICE" $$ > /dev/null
  if [ "$(ps -o sid= -p $$ | tr -d ' ')" = "$$" ] && [ -w /proc/self/autogroup ]; then
    echo "$NICE" > /proc/self/autogroup 2> /dev/null || true
  fi
fi
