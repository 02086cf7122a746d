#!/bin/sh
# Stop the region agent named by a pid file: SIGTERM to its process group (the agent
# and the workers it started), SIGKILL after MERIDIAN_AGENT_STOP_TIMEOUT seconds
# (default 15), then remove the pid file.
#
#   stop-agent.sh PID_FILE
#
# A pid file whose process is gone, or whose pid now belongs to a process that is not
# the session leader start-agent.sh made, is just removed.
set -eu

pid_file=$1
timeout=${MERIDIAN_AGENT_STOP_TIMEOUT:-15}

alive() {
  if [ -r "/proc/$1/stat" ]; then
    state=$(sed 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f1)
    [ "$state" != Z ]
  else
    kill -0 "$1" 2>/dev/null
  fi
}

# the session id of PID ("" when unknown)
session_of() {
  if [ -r "/proc/$1/stat" ]; then
    sed 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f4
  fi
}

if [ ! -s "$pid_file" ]; then
  echo "no agent pid file at $pid_file; nothing to stop"
  exit 0
fi
pid=$(cat "$pid_file")
case $pid in
  '' | *[!0-9]*)
    echo "ignoring $pid_file: not a pid" >&2
    rm -f "$pid_file"
    exit 0
    ;;
esac

if alive "$pid"; then
  sid=$(session_of "$pid")
  if [ -n "$sid" ] && [ "$sid" != "$pid" ] && command -v setsid >/dev/null 2>&1; then
    echo "pid $pid is no longer the agent (another process reuses it); not signalling it"
    rm -f "$pid_file"
    exit 0
  fi
  target=$pid
  if [ "$sid" = "$pid" ]; then
    target=-$pid
  fi
  kill -TERM "$target" 2>/dev/null || true
  waited=0
  while alive "$pid"; do
    if [ "$waited" -ge "$((timeout * 10))" ]; then
      echo "agent $pid did not stop within $timeout s; killing it" >&2
      kill -KILL "$target" 2>/dev/null || true
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  echo "agent $pid stopped"
else
  echo "agent $pid was not running"
fi
rm -f "$pid_file"
