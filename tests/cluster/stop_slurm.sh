#!/usr/bin/env bash
# Stops the cluster tests/cluster/start_slurm.sh started (slurmd, slurmctld, munged), by their pid
# files under $MOSAIC_SLURM_DIR (default /tmp/mosaic-slurm). Idempotent; keeps the logs.
set -uo pipefail

DIR=${MOSAIC_SLURM_DIR:-/tmp/mosaic-slurm}
export SLURM_CONF=$DIR/slurm.conf

[ -s "$SLURM_CONF" ] && scancel --quiet --user root 2>/dev/null
for name in slurmd slurmctld munged; do
  pidfile=$DIR/run/$name.pid
  [ -s "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$pidfile"
done
rm -f "$DIR/run/munge.socket"*
[ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$DIR/slurm.conf" ] && rm -f /etc/slurm/slurm.conf
echo "stop_slurm.sh: stopped (state in $DIR)"
