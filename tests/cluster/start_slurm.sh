#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests/test_slurm.py (and by hand).
# Installs Debian's slurmctld/slurmd/munge when missing (needs root), writes a munge key and a
# slurm.conf with one node of this machine's cores and memory, starts munged, slurmctld and
# slurmd, and waits until `sinfo` shows the node idle. Idempotent: a running cluster is left as is.
# All state lives under $MOSAIC_SLURM_DIR (default /tmp/mosaic-slurm); clients find the cluster
# through SLURM_CONF (export SLURM_CONF=$MOSAIC_SLURM_DIR/slurm.conf) or the link
# /etc/slurm/slurm.conf -> it, which the script makes (and refuses to replace a real one).
# No accounting database: snakemake-executor-plugin-slurm polls with squeue (status_command:
# squeue, which it keeps while MinJobAge is at least 3x its first status-check delay) and runs
# with no account (slurm-no-account), so slurmdbd/mariadb are not needed.
# Stop with tests/cluster/stop_slurm.sh.
set -euo pipefail

DIR=${MOSAIC_SLURM_DIR:-/tmp/mosaic-slurm}
CTLD_PORT=${MOSAIC_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${MOSAIC_SLURM_SLURMD_PORT:-6818}
export SLURM_CONF=$DIR/slurm.conf

if [ "$(id -u)" != 0 ]; then
  echo "start_slurm.sh: needs root (to install the packages and run slurmd)" >&2
  exit 2
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -q && apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge; } \
    >"${TMPDIR:-/tmp}/mosaic-slurm-apt.log" 2>&1 || {
    echo "start_slurm.sh: apt-get install slurmctld slurmd slurm-client munge failed:" >&2
    tail -5 "${TMPDIR:-/tmp}/mosaic-slurm-apt.log" >&2
    exit 3
  }
fi

mkdir -p "$DIR"/{spool/ctld,spool/d,log,run}
chmod 700 "$DIR"

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# (sinfo without a slurmctld retries for a minute: ask it only when the daemons run)
if pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" \
   && [ "$(sinfo -h -o %T 2>/dev/null)" = idle ]; then
  echo "start_slurm.sh: cluster already up (SLURM_CONF=$SLURM_CONF)"
  exit 0
fi

# munge: its own key, socket and files under $DIR (munged runs as root here, hence --force)
if [ ! -s "$DIR/munge.key" ]; then
  dd if=/dev/urandom of="$DIR/munge.key" bs=1 count=1024 status=none
  chmod 400 "$DIR/munge.key"
fi
if ! [ -S "$DIR/run/munge.socket" ] || ! munge -n -S "$DIR/run/munge.socket" >/dev/null 2>&1; then
  rm -f "$DIR/run/munge.socket"*
  munged --force --key-file "$DIR/munge.key" --socket "$DIR/run/munge.socket" \
    --pid-file "$DIR/run/munged.pid" --log-file "$DIR/log/munged.log" --seed-file "$DIR/run/munge.seed"
fi

NODE=$(hostname -s)
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # (nproc honours OMP_NUM_THREADS)
# slurmd drains a node that reports less memory than RealMemory: keep a margin of 5 %
MEM_MB=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.95}' /proc/meminfo)

cat >"$DIR/slurm.conf.new" <<EOF
# Written by tests/cluster/start_slurm.sh
ClusterName=mosaic
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/run/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# containers: no cgroups
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# finished jobs stay visible to squeue for an hour (the executor plugin polls squeue; the test reads
# the time limits the profile gave)
MinJobAge=3600
KillWait=5
InactiveLimit=0
Waittime=0
MpiDefault=none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
mv "$DIR/slurm.conf.new" "$DIR/slurm.conf"
# Also at SLURM's default path: snakemake-executor-plugin-slurm-jobstep drops SLURM_CONF (all SLURM_*
# but the job's identity) from the environment of the srun it runs each job in.
if [ -e /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" != "$DIR/slurm.conf" ]; then
  echo "start_slurm.sh: /etc/slurm/slurm.conf exists and is not this cluster's; not replacing it" >&2
  exit 5
fi
mkdir -p /etc/slurm
ln -sfn "$DIR/slurm.conf" /etc/slurm/slurm.conf

pid_alive "$DIR/run/slurmctld.pid" || slurmctld -f "$SLURM_CONF"
pid_alive "$DIR/run/slurmd.pid" || slurmd -f "$SLURM_CONF"

for _ in $(seq 60); do
  state=$(sinfo -h -o %T 2>/dev/null || true)
  if [ "$state" = idle ]; then
    echo "start_slurm.sh: cluster up: node $NODE, $CPUS CPUs, $MEM_MB MB, partition debug (SLURM_CONF=$SLURM_CONF)"
    exit 0
  fi
  case "$state" in down*|drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;; esac
  sleep 1
done
echo "start_slurm.sh: the node did not become idle (sinfo: '${state:-}'); logs in $DIR/log" >&2
tail -5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
exit 4
