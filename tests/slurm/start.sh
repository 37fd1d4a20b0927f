#!/usr/bin/env bash
# Start a single-node SLURM (munge, slurmctld, slurmd) for tests; see ../../../shared/notes/slurm.md.
#
#   tests/slurm/start.sh STATE_DIR     (as root; installs slurm-wlm and munge when missing)
#   tests/slurm/stop.sh STATE_DIR
#
# Everything SLURM writes (state, spool, logs, pid files) lives in STATE_DIR. The config goes
# to /etc/slurm/slurm.conf, where every SLURM command finds it: SLURM_CONF would not do, since
# Snakemake's slurm-jobstep plugin removes SLURM_* variables before its `srun` inside a job.
# An /etc/slurm/slurm.conf that this script did not write is never overwritten (status 78);
# stop.sh removes the one it wrote. MinJobAge is an hour (not the 300 s of the notes), so that
# `squeue` and `scontrol show job` still know every job of a test when it checks them.
#
# Exit status: 0 running (the node is idle); 77 SLURM cannot be installed here (not root,
# no apt-get, apt-get failed); 78 this machine already has a SLURM (a running slurmctld or
# slurmd, or an /etc/slurm/slurm.conf of its own), which this script leaves alone; 79
# installed but the daemons did not come up (their log tails follow). On failure the last
# line on standard error is "reason: ..." (what a test reports when it skips or fails).
set -uo pipefail

state=${1:?usage: start.sh STATE_DIR}
mkdir -p "$state" || { echo "reason: cannot create $state" >&2; exit 79; }
state=$(cd "$state" && pwd)

cannot_install() { echo "reason: SLURM cannot be installed here: $*" >&2; exit 77; }
conflict() { echo "reason: not touching the SLURM already on this machine: $*" >&2; exit 78; }
cannot_start() {
    for f in "$state"/log/*.log; do
        [[ -f $f ]] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }
    done
    "$(dirname "$0")/stop.sh" "$state" >/dev/null 2>&1
    echo "reason: SLURM is installed but did not start: $*" >&2
    exit 79
}

# ----------------------------------------------------------------------------- install
need=()
for cmd in slurmctld slurmd sinfo sbatch squeue scancel; do
    command -v "$cmd" >/dev/null || need=(slurm-wlm)
done
command -v munged >/dev/null || need+=(munge)
if ((${#need[@]})); then
    [[ $(id -u) == 0 ]] || cannot_install "${need[*]} missing and not root (uid $(id -u)); run as root or install them"
    command -v apt-get >/dev/null || cannot_install "${need[*]} missing and no apt-get on this system"
    echo "installing ${need[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$state/apt.log" 2>&1 ||
        cannot_install "apt-get update failed (no network or package mirror?): $(tail -n 1 "$state/apt.log")"
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >>"$state/apt.log" 2>&1 ||
        cannot_install "apt-get install slurm-wlm munge failed: $(tail -n 1 "$state/apt.log")"
fi
[[ $(id -u) == 0 ]] || cannot_install "the daemons need root (uid $(id -u))"

# ----------------------------------------------------------------------------- conflicts
conf=/etc/slurm/slurm.conf
if [[ -e $conf ]] && ! head -n 1 "$conf" | grep -q '^# flowvae test SLURM'; then
    conflict "$conf exists and was not written by this script"
fi
if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
    hint=""
    if [[ -f $conf ]]; then  # left running by an earlier start.sh (a test that was killed)?
        old=$(head -n 1 "$conf" | sed -n 's/^# flowvae test SLURM, state in \(.*\) (tests.*/\1/p')
        [[ -n $old ]] && hint="; if tests/slurm/start.sh started it, stop it with tests/slurm/stop.sh $old"
    fi
    conflict "a slurmctld or slurmd is already running (pids $(pgrep -d ' ' -x 'slurmctld|slurmd'))$hint"
fi

# ----------------------------------------------------------------------------- munge
mkdir -p "$state/state" "$state/spool" "$state/log"
# The package creates the key; older ones left it to the administrator.
[[ -f /etc/munge/munge.key ]] || mungekey --create >/dev/null 2>&1 ||
    /usr/sbin/create-munge-key -f >/dev/null 2>&1 || cannot_start "no munge key /etc/munge/munge.key"
mkdir -p /run/munge
chown munge:munge /run/munge /etc/munge /etc/munge/munge.key /var/lib/munge /var/log/munge 2>/dev/null
chmod 0400 /etc/munge/munge.key
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    echo "munged already running; using it" >&2
else
    runuser -u munge -- /usr/sbin/munged --force || cannot_start "munged failed"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.2
    done
    munge -n | unmunge >/dev/null 2>&1 || cannot_start "munge does not answer"
    cp /run/munge/munged.pid "$state/munged.pid"
fi

# ----------------------------------------------------------------------------- slurm
host=$(hostname)
cpus=$(nproc)
mkdir -p /etc/slurm
cat >"$state/slurm.conf" <<CONF
# flowvae test SLURM, state in $state (tests/slurm/start.sh)
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$state/state
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=3600
ReturnToService=2
NodeName=$host CPUs=$cpus RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
cp "$state/slurm.conf" "$conf"

slurmctld || cannot_start "slurmctld exited with status $?"
slurmd || cannot_start "slurmd exited with status $?"

# The node registers, then turns idle.
for _ in $(seq 60); do
    [[ $(sinfo -h -N -o %t 2>/dev/null) == idle ]] && break
    sleep 0.5
done
[[ $(sinfo -h -N -o %t 2>/dev/null) == idle ]] ||
    cannot_start "node not idle after 30 s: $(sinfo -h -N -o '%N %t %E' 2>&1 | head -n 1)"
sinfo >&2
echo "SLURM is up: $conf, state in $state" >&2
