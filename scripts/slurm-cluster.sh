#!/usr/bin/env bash
# Single-node SLURM test cluster (slurmctld + slurmd + slurmdbd/MariaDB + munge).
#
#   scripts/slurm-cluster.sh up      # install (if needed), configure, start; idempotent
#   scripts/slurm-cluster.sh down    # stop all daemons (by PID file)
#   scripts/slurm-cluster.sh status  # exit 0 when the node is usable, 1 otherwise
#
# Meant for a throw-away Debian 12 CI machine / container without systemd,
# run as root.  Uses the Debian packages' config location (/etc/slurm), so the
# stock sbatch/squeue/sacct/scontrol/scancel clients talk to this cluster.
#
# Environment knobs (all optional):
#   SLURM_CLUSTER_NAME      cluster name            (default: robustmtl)
#   SLURM_ACCOUNT           default account of root (default: robustmtl)
#   SLURM_FAKE_GPUS         number of fake GPUs     (default: 2)
#   SLURM_UP_TIMEOUT        seconds to wait for idle (default: 90)
set -euo pipefail
# The daemons inherit this working directory and their job steps start in it:
# run from / so that deleting the checkout that started the cluster breaks nothing.
cd /

CLUSTER="${SLURM_CLUSTER_NAME:-robustmtl}"
ACCOUNT="${SLURM_ACCOUNT:-robustmtl}"
NGPUS="${SLURM_FAKE_GPUS:-2}"
UP_TIMEOUT="${SLURM_UP_TIMEOUT:-90}"

CONF_DIR=/etc/slurm
SLURM_CONF="$CONF_DIR/slurm.conf"
DBD_CONF="$CONF_DIR/slurmdbd.conf"
GRES_CONF="$CONF_DIR/gres.conf"
LOG_DIR=/var/log/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd

SLURMD_PID=/run/slurmd.pid
SLURMCTLD_PID=/run/slurmctld.pid
SLURMDBD_PID=/run/slurmdbd.pid
MYSQLD_PID=/run/mysqld/mysqld.pid
MUNGED_PID=/run/munge/munged.pid

DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=slurmdbpass   # local throw-away test cluster only
DBD_PORT=6819

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

log() { printf '[slurm-cluster] %s\n' "$*" >&2; }
die() { printf '[slurm-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

LOG_HINT="see $LOG_DIR/{slurmctld,slurmd,slurmdbd}.log, $LOG_DIR/*.out, $LOG_DIR/mariadb.out, /var/log/munge/munged.log"

# ----------------------------------------------------------------- helpers
proc_running() {  # proc_running PID -> 0 if PID exists and is not a zombie
  local st
  kill -0 "$1" 2>/dev/null || return 1
  # zombies (e.g. when PID 1 of a container does not reap) count as dead
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1 || true)
  [[ $st != Z && $st != X ]]
}

pid_alive() {  # pid_alive PIDFILE -> 0 if the daemon named in PIDFILE runs
  local f=$1 pid comm
  [[ -r $f ]] || return 1
  pid=$(tr -dc '0-9' <"$f" 2>/dev/null || true)
  [[ -n $pid ]] && proc_running "$pid" || return 1
  # guard against a stale pid file whose pid now belongs to something else
  # (e.g. a container restarted with a persistent /run)
  comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
  case "$(basename "$f" .pid)" in
    mysqld) [[ $comm == mariadbd || $comm == mysqld ]] ;;
    *) [[ $comm == "$(basename "$f" .pid)" ]] ;;
  esac
}

node_state() {  # prints the sinfo state of the node ("" if no answer)
  timeout 10 sinfo -h -o %T 2>/dev/null | head -n1 || true
}

state_usable() {  # idle / mixed / allocated / completing without flags (*~#!%$@^-)
  case "$1" in
    idle|mixed|allocated|completing) return 0 ;;
    *) return 1 ;;
  esac
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION CMD... (polls every 0.5 s)
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if (( SECONDS >= deadline )); then
      die "timed out after ${secs}s waiting for $what; $LOG_HINT"
    fi
    sleep 0.5
  done
}

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (installs packages and starts daemons)"; }

# --------------------------------------------------------------- install
install_packages() {
  local missing=0 b
  for b in slurmctld slurmd sbatch sacct sacctmgr munged mungekey slurmdbd mariadbd mariadb; do
    command -v "$b" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null 2>&1 || missing=1
  done
  (( missing )) || return 0
  command -v apt-get >/dev/null || die "packages missing and apt-get not available (need: ${PACKAGES[*]})"
  log "installing ${PACKAGES[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  local apt_opts=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  local out
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    apt-get update -qq >/dev/null || die "apt-get update failed"
  fi
  if ! out=$(apt-get install "${apt_opts[@]}" "${PACKAGES[@]}" 2>&1); then
    log "apt-get install failed, running apt-get update and retrying"
    apt-get update -qq >/dev/null || die "apt-get update failed"
    out=$(apt-get install "${apt_opts[@]}" "${PACKAGES[@]}" 2>&1) \
      || { printf '%s\n' "$out" | tail -n 20 >&2; die "apt-get install ${PACKAGES[*]} failed"; }
  fi
}

# ---------------------------------------------------------------- config
CONFIG_CHANGED=0

write_if_changed() {  # write_if_changed PATH MODE OWNER  (content on stdin); sets CONFIG_CHANGED=1 on change
  local dst=$1 mode=$2 owner=$3 tmp
  tmp=$(mktemp "${dst}.XXXXXX")
  cat >"$tmp"
  chmod "$mode" "$tmp"; chown "$owner" "$tmp"
  if [[ -f $dst ]] && cmp -s "$tmp" "$dst" \
     && [[ $(stat -c '%a %U:%G' "$dst") == "$mode $owner" ]]; then
    rm -f "$tmp"; return 0
  fi
  mv -f "$tmp" "$dst"
  CONFIG_CHANGED=1
}

write_configs() {
  local host cpus mem_kb real_mem i
  host=$(hostname -s)
  cpus=$(nproc)
  mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
  real_mem=$(( mem_kb * 9 / 10 / 1024 ))

  install -d -m 755 "$CONF_DIR"

  # fake GPUs: char devices aliasing /dev/null (major 1, minor 3)
  for ((i = 0; i < NGPUS; i++)); do
    [[ -c /dev/fakegpu$i ]] || { rm -f "/dev/fakegpu$i"; mknod -m 666 "/dev/fakegpu$i" c 1 3; }
  done

  local gres_node="" gres_types=""
  if (( NGPUS > 0 )); then gres_node=" Gres=gpu:$NGPUS"; gres_types="GresTypes=gpu"; fi

  write_if_changed "$SLURM_CONF" 644 root:root <<EOF
# Generated by scripts/slurm-cluster.sh -- single-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
MailProg=/bin/true
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
MaxArraySize=1001
MinJobAge=300
KillWait=10
SlurmctldTimeout=30
SlurmdTimeout=60
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
$gres_types
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStorageEnforce=associations,limits,qos
AccountingStorageTRES=gres/gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem$gres_node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

  write_if_changed "$GRES_CONF" 644 root:root < <(
    echo "# Generated by scripts/slurm-cluster.sh"
    echo "AutoDetect=off"
    for ((i = 0; i < NGPUS; i++)); do echo "NodeName=$host Name=gpu File=/dev/fakegpu$i"; done
  )

  write_if_changed "$DBD_CONF" 600 slurm:slurm <<EOF
# Generated by scripts/slurm-cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=slurm
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$SLURMDBD_PID
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
}

make_dirs() {
  install -d -o slurm -g slurm -m 755 "$LOG_DIR" "$CTLD_SPOOL"
  install -d -o root -g root -m 755 "$SLURMD_SPOOL"
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /etc/munge /var/lib/munge
  install -d -o munge -g munge -m 700 /var/log/munge
  install -d -o mysql -g mysql -m 755 /run/mysqld
}

# --------------------------------------------------------------- daemons
start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  if pid_alive "$MUNGED_PID"; then return 0; fi
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  # munged daemonizes itself and writes $MUNGED_PID
  runuser -u munge -- /usr/sbin/munged >>"$LOG_DIR/munged.out" 2>&1 \
    || die "munged failed to start; see /var/log/munge/munged.log and $LOG_DIR/munged.out"
  wait_for 15 "munged" bash -c 'munge -n </dev/null | unmunge >/dev/null 2>&1'
}

mysql_up() { mariadb-admin --protocol=socket -uroot ping >/dev/null 2>&1; }

start_mariadb() {
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    log "initialising MariaDB data directory"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$LOG_DIR/mariadb.out" 2>&1 \
      || die "mariadb-install-db failed; see $LOG_DIR/mariadb.out"
  fi
  if ! pid_alive "$MYSQLD_PID"; then
    rm -f "$MYSQLD_PID"
    setsid mariadbd --user=mysql --pid-file="$MYSQLD_PID" \
      --innodb-lock-wait-timeout=900 --innodb-buffer-pool-size=256M \
      </dev/null >>"$LOG_DIR/mariadb.out" 2>&1 &
  fi
  wait_for 60 "MariaDB" mysql_up
  mariadb --protocol=socket -uroot <<EOF || die "creating the slurm DB user failed"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_bg() {  # start_bg PIDFILE NAME CMD...   (foreground daemon, detached via setsid)
  local pidfile=$1 name=$2; shift 2
  if pid_alive "$pidfile"; then return 0; fi
  rm -f "$pidfile"
  setsid "$@" </dev/null >>"$LOG_DIR/$name.out" 2>&1 &
  local pid=$!
  # slurm daemons write their own pid file; make sure it exists for `down`.
  local i
  for i in $(seq 1 20); do [[ -s $pidfile ]] && break; sleep 0.1; done
  proc_running "$pid" || die "$name exited right after start; $LOG_HINT"
  [[ -s $pidfile ]] || echo "$pid" >"$pidfile"
}

start_slurmdbd() {
  start_bg "$SLURMDBD_PID" slurmdbd slurmdbd -D
  wait_for 60 "slurmdbd on port $DBD_PORT" port_open "$DBD_PORT"
}

sacctmgr_q() { timeout 30 sacctmgr -n -P "$@" 2>/dev/null; }

register_accounting() {
  if ! sacctmgr_q list cluster format=cluster | grep -qx "$CLUSTER"; then
    log "registering cluster $CLUSTER in accounting"
    timeout 30 sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed"
  fi
  if ! sacctmgr_q list account format=account | grep -qx "$ACCOUNT"; then
    timeout 30 sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" \
      description="robustmtl test account" organization=robustmtl >/dev/null \
      || die "sacctmgr add account $ACCOUNT failed"
  fi
  if ! sacctmgr_q list assoc where user=root account="$ACCOUNT" cluster="$CLUSTER" format=user | grep -qx root; then
    timeout 30 sacctmgr -i add user root account="$ACCOUNT" cluster="$CLUSTER" >/dev/null \
      || die "sacctmgr add user root failed"
  fi
  if [[ $(sacctmgr_q list user root format=defaultaccount) != "$ACCOUNT" ]]; then
    timeout 30 sacctmgr -i modify user root set defaultaccount="$ACCOUNT" >/dev/null \
      || die "sacctmgr modify user root defaultaccount failed"
  fi
}

stop_pidfile() {  # stop_pidfile PIDFILE NAME
  local f=$1 name=$2 pid i
  pid_alive "$f" || { rm -f "$f" 2>/dev/null || true; return 0; }
  pid=$(tr -dc '0-9' <"$f")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 300); do proc_running "$pid" || break; sleep 0.1; done
  if proc_running "$pid"; then
    log "$name did not exit after 30s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 1 20); do proc_running "$pid" || break; sleep 0.25; done
  fi
  rm -f "$f" 2>/dev/null || true
}

summary() {
  local st; st=$(node_state)
  echo "slurm cluster '$CLUSTER' up on $(hostname -s): node ${st:-?}, $(nproc) CPUs, gpu:$NGPUS (fake), partition debug, account $ACCOUNT, accounting via slurmdbd:$DBD_PORT ($1)"
}

# ------------------------------------------------------------ commands
cmd_up() {
  need_root
  local t0=$SECONDS
  # pid checks first: sinfo without a controller retries for ~10 s
  if pid_alive "$SLURMDBD_PID" && pid_alive "$SLURMCTLD_PID" && pid_alive "$SLURMD_PID" \
     && state_usable "$(node_state)"; then
    write_configs   # no-op unless this script's config changed since the daemons started
    if (( ! CONFIG_CHANGED )); then
      summary "already running"
      return 0
    fi
  fi
  install_packages
  make_dirs
  write_configs
  if (( CONFIG_CHANGED )) && { pid_alive "$SLURMCTLD_PID" || pid_alive "$SLURMD_PID" || pid_alive "$SLURMDBD_PID"; }; then
    log "configuration changed; restarting slurm daemons"
    stop_pidfile "$SLURMD_PID" slurmd
    stop_pidfile "$SLURMCTLD_PID" slurmctld
    stop_pidfile "$SLURMDBD_PID" slurmdbd
  fi
  start_munge
  start_mariadb
  start_slurmdbd
  register_accounting
  start_bg "$SLURMCTLD_PID" slurmctld slurmctld -D
  start_bg "$SLURMD_PID" slurmd slurmd -D

  local deadline=$((SECONDS + UP_TIMEOUT)) st="" resumed=0
  while :; do
    st=$(node_state)
    state_usable "$st" && break
    # A node left DOWN/DRAIN by an earlier unclean stop: resume it once.
    if (( ! resumed )) && [[ $st == down* || $st == drain* ]] && pid_alive "$SLURMD_PID"; then
      scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
      resumed=1
    fi
    pid_alive "$SLURMCTLD_PID" || die "slurmctld died during start-up; $LOG_HINT"
    pid_alive "$SLURMD_PID" || die "slurmd died during start-up; $LOG_HINT"
    (( SECONDS < deadline )) || die "node not idle after ${UP_TIMEOUT}s (sinfo state: '${st:-no answer}'); $LOG_HINT"
    sleep 0.5
  done
  summary "started in $((SECONDS - t0))s"
}

cmd_down() {
  need_root
  stop_pidfile "$SLURMD_PID" slurmd
  stop_pidfile "$SLURMCTLD_PID" slurmctld
  stop_pidfile "$SLURMDBD_PID" slurmdbd
  stop_pidfile "$MYSQLD_PID" mariadbd
  stop_pidfile "$MUNGED_PID" munged
  echo "slurm cluster stopped"
}

cmd_status() {
  local rc=0 st n
  for n in "slurmd:$SLURMD_PID" "slurmctld:$SLURMCTLD_PID" "slurmdbd:$SLURMDBD_PID" \
           "mariadbd:$MYSQLD_PID" "munged:$MUNGED_PID"; do
    if pid_alive "${n#*:}"; then echo "${n%%:*}: running (pid $(tr -dc '0-9' <"${n#*:}"))"
    else echo "${n%%:*}: not running"; fi
  done
  if ! pid_alive "$SLURMCTLD_PID"; then
    echo "sinfo: skipped (slurmctld not running)"; st=""
  elif command -v sinfo >/dev/null; then
    timeout 10 sinfo 2>&1 || true
    st=$(node_state)
  else
    echo "sinfo: not installed"; st=""
  fi
  if state_usable "$st"; then echo "status: up (node $st)"; else echo "status: down (node state '${st:-no answer}')"; rc=1; fi
  return "$rc"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
