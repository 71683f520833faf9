#!/usr/bin/env bash
# A real Slurm cluster on this one machine, for the Slurm tests: munged, slurmctld and one slurmd per
# fake node (n1, n2, ...), all with a private config, state, sockets and ports under one directory.
#   tests/slurm/cluster.sh install   apt-get slurmctld, slurmd, slurm-client and munge (root; once)
#   tests/slurm/cluster.sh up        write the config, start the daemons, wait until every node is idle
#   tests/slurm/cluster.sh down      stop what `up` started (by its pid files) and remove the directory
#   tests/slurm/cluster.sh status    sinfo / squeue of the private cluster
#   tests/slurm/cluster.sh env       the line to eval to talk to it: export SLURM_CONF=...
#   tests/slurm/cluster.sh hide NODE DIR   restart NODE's slurmd in a private mount namespace where DIR is an empty
#                                          tmpfs: that node (and every step it runs) cannot see what DIR holds, as a
#                                          node without the cluster's shared filesystem would not
#   tests/slurm/cluster.sh unhide NODE     restart NODE's slurmd as `up` started it
# Environment: TUCANO2_SLURM_DIR (default /tmp/tucano2-slurm), TUCANO2_SLURM_PORT (default 46817:
# slurmctld; slurmd of node k on PORT+k), TUCANO2_SLURM_NODES (default 2).
#
# Every fake node has NodeAddr=127.0.0.1 and NodeHostname=$(hostname -s): Slurm tells them apart by
# their slurmd port (`slurmd -N nK`), and `%n` keeps their spool, pid and log files apart. The settings
# that make several slurmd daemons work on one machine: proctrack/linuxproc, task/none, select/cons_tres,
# jobacct_gather/none. AuthInfo=cred_expire=10 shortens the wait before a requeued job may start again
# (Slurm holds it for cred_expire + 1 s; 120 s by default).
set -euo pipefail
cmd="${1:-}"
D="${TUCANO2_SLURM_DIR:-/tmp/tucano2-slurm}"
PORT="${TUCANO2_SLURM_PORT:-46817}"
NODES="${TUCANO2_SLURM_NODES:-2}"
CONF="$D/slurm.conf"
export SLURM_CONF="$CONF"

die() { echo "cluster: $*" >&2; exit 1; }
have_slurm() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
               && command -v munged >/dev/null; }

install() {
  if have_slurm; then echo "cluster: slurm and munge already installed"; return; fi
  [ "$(id -u)" = 0 ] || die "installing Slurm needs root (apt-get)"
  command -v apt-get >/dev/null || die "installing Slurm needs apt-get (Debian's slurm-wlm packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  have_slurm || die "apt-get ran but slurmctld/slurmd/sbatch/munged are still missing"
  echo "cluster: installed $(slurmctld -V)"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_config() {
  local host nodes="" names=""
  host="$(hostname -s)"
  for k in $(seq 1 "$NODES"); do
    nodes+="NodeName=n$k NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + k)) CPUs=2 State=UNKNOWN"$'\n'
    names+="${names:+,}n$k"
  done
  cat > "$CONF" <<CONF
# Written by tests/slurm/cluster.sh: a private test cluster of $NODES fake nodes on this machine.
ClusterName=tucano2test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/munge/munge.socket,cred_expire=10
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
SlurmdTimeout=60
KillWait=30
MailProg=/bin/true
${nodes}PartitionName=debug Nodes=$names Default=YES MaxTime=INFINITE State=UP
CONF
}

up() {
  have_slurm || die "Slurm is not installed: run tests/slurm/cluster.sh install (root, apt-get)"
  [ "$(id -u)" = 0 ] || die "the test cluster runs its daemons as root"
  if pid_alive "$D/run/slurmctld.pid"; then echo "cluster: already up ($D)"; return; fi
  mkdir -p "$D"/{state,spool,run,log,munge}
  chmod 0700 "$D/munge"
  write_config
  if [ ! -f "$D/munge/munge.key" ]; then
    dd if=/dev/urandom of="$D/munge/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$D/munge/munge.key"
  fi
  munged --force --key-file="$D/munge/munge.key" --socket="$D/munge/munge.socket" \
    --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" --seed-file="$D/munge/munged.seed"
  slurmctld -f "$CONF"
  for k in $(seq 1 "$NODES"); do
    mkdir -p "$D/spool/n$k"
    slurmd -f "$CONF" -N "n$k"
  done
  for _ in $(seq 1 60); do
    idle=$(sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l || true)
    if [ "$idle" -ge "$NODES" ]; then echo "cluster: up, $NODES node(s) idle ($D, slurmctld port $PORT)"; return; fi
    sleep 1
  done
  sinfo -N >&2 || true
  tail -20 "$D/log/slurmctld.log" >&2 || true
  die "nodes not idle after 60 s (logs in $D/log)"
}

stop_pidfile() {
  local f="$1" pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
}

down() {
  [ -d "$D" ] || { echo "cluster: not up ($D)"; return; }
  if pid_alive "$D/run/slurmctld.pid"; then
    local jobs
    jobs="$(squeue -h -o %i 2>/dev/null || true)"
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086  # one job id per word
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 1 40); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 1; done
    fi
  fi
  for k in $(seq 1 "$NODES"); do stop_pidfile "$D/run/slurmd-n$k.pid"; done
  stop_pidfile "$D/run/slurmctld.pid"
  stop_pidfile "$D/munge/munged.pid"
  rm -rf "$D"
  echo "cluster: down"
}

wait_idle() {
  for _ in $(seq 1 60); do
    if sinfo -h -N -t idle -o %N 2>/dev/null | grep -qx "$1"; then return 0; fi
    sleep 1
  done
  sinfo -N >&2 || true
  die "node $1 not idle after 60 s (logs in $D/log)"
}

restart_node() {  # NODE [DIR]: stop its slurmd, start it again (with DIR hidden when given), wait until idle
  local node="$1" dir="${2:-}"
  pid_alive "$D/run/slurmctld.pid" || die "not up ($D)"
  stop_pidfile "$D/run/slurmd-$node.pid"
  if [ -n "$dir" ]; then
    [ -d "$dir" ] || die "hide: no directory $dir"
    # slurmd forks into the background inside the namespace; its steps inherit the tmpfs over DIR
    unshare --mount --propagation private sh -c 'mount -t tmpfs -o size=1m,mode=0700 tucano2-hidden "$1" &&
      exec slurmd -f "$2" -N "$3"' hide "$dir" "$CONF" "$node"
  else
    slurmd -f "$CONF" -N "$node"
  fi
  wait_idle "$node"
  echo "cluster: $node restarted${dir:+ without $dir}"
}

case "$cmd" in
  install) install ;;
  up) up ;;
  down) down ;;
  status) sinfo -N; squeue ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  hide) [ $# -eq 3 ] || die "usage: tests/slurm/cluster.sh hide NODE DIR"; restart_node "$2" "$3" ;;
  unhide) [ $# -eq 2 ] || die "usage: tests/slurm/cluster.sh unhide NODE"; restart_node "$2" ;;
  *) echo "usage: tests/slurm/cluster.sh install|up|down|status|env|hide|unhide" >&2; exit 2 ;;
esac
