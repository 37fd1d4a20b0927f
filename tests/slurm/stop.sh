#!/usr/bin/env bash
# Stop the SLURM started by start.sh STATE_DIR: slurmd, slurmctld and (when start.sh started
# it) munged, by the pids in their pid files; then remove the /etc/slurm/slurm.conf that
# start.sh wrote for this STATE_DIR. Safe to call twice or after a failed start.
set -uo pipefail

state=${1:?usage: stop.sh STATE_DIR}
status=0
for name in slurmd slurmctld munged; do
    pidfile="$state/$name.pid"
    [[ -f $pidfile ]] || continue
    pid=$(<"$pidfile")
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$name ($pid) ignored SIGTERM; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || status=1
        fi
    fi
    rm -f "$pidfile"
done
conf=/etc/slurm/slurm.conf
if [[ -f $conf ]] && head -n 1 "$conf" | grep -qF "state in $(cd "$state" 2>/dev/null && pwd) "; then
    rm -f "$conf"
fi
exit $status
