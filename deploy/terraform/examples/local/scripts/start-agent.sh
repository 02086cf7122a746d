#!/bin/sh
# Start a region agent in the background, detached from Terraform in a session of its
# own, and record its pid.
#
#   start-agent.sh PID_FILE LOG_FILE AGENT_COMMAND [ARG...]
#
# An agent still running from PID_FILE is left alone. The agent's output goes to
# LOG_FILE (Terraform waits for the output of what it starts, so nothing may stay
# attached to it). Exits non-zero, with the end of the log, when the agent does not
# come up or dies within MERIDIAN_AGENT_START_GRACE seconds (default 1).
set -eu

pid_file=$1
log_file=$2
shift 2
grace=${MERIDIAN_AGENT_START_GRACE:-1}

# alive PID: the process exists and is not a zombie
alive() {
  [ -n "$1" ] || return 1
  if [ -r "/proc/$1/stat" ]; then
    state=$(sed 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f1)
    [ "$state" != Z ]
  else
    kill -0 "$1" 2>/dev/null
  fi
}

mkdir -p "$(dirname "$pid_file")" "$(dirname "$log_file")"
if [ -s "$pid_file" ] && alive "$(cat "$pid_file")"; then
  echo "agent already running (pid $(cat "$pid_file"))"
  exit 0
fi
rm -f "$pid_file"

detach=""
if command -v setsid >/dev/null 2>&1; then
  detach=setsid
fi
# the child writes its own pid (then becomes the agent with exec), so the pid file
# names the agent even where setsid has to fork
# shellcheck disable=SC2016
$detach nohup sh -c 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pid_file" "$@" \
  </dev/null >>"$log_file" 2>&1 &

waited=0
while [ ! -s "$pid_file" ]; do
  if [ "$waited" -ge 100 ]; then
    echo "the agent did not start within 10 s; see $log_file" >&2
    exit 1
  fi
  sleep 0.1
  waited=$((waited + 1))
done
pid=$(cat "$pid_file")

# a command that fails at once (bad arguments, missing credential) fails the apply
waited=0
while [ "$waited" -lt "$((grace * 10))" ]; do
  if ! alive "$pid"; then
    echo "the agent (pid $pid) exited during start-up; the end of $log_file:" >&2
    tail -n 20 "$log_file" >&2 || true
    rm -f "$pid_file"
    exit 1
  fi
  sleep 0.1
  waited=$((waited + 1))
done
echo "agent started (pid $pid), log: $log_file"
