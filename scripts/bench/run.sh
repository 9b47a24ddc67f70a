#!/usr/bin/env bash
# Sluice benchmark harness: Postfix baseline vs Sluice, plus an idle-connection
# memory check.  See scripts/bench/README.md.
#
#   SLUICE_BIN=.build/release/sluice bash scripts/bench/run.sh
#
# Environment:
#   SLUICE_BIN            path to the sluice binary (required unless BENCH_ONLY=postfix)
#   BENCH_MESSAGES        messages per throughput run            (3000)
#   BENCH_SESSIONS        parallel SMTP sessions (smtp-source -s) (20)
#   BENCH_SIZE            message payload bytes  (smtp-source -l) (5120)
#   BENCH_REUSE           1: reuse connections (smtp-source -d), 0: one per message (1)
#   BENCH_IDLE_CONNS      idle connections to hold open          (1000)
#   BENCH_IDLE_LIMIT_MB   RSS limit for the idle check           (100)
#   BENCH_TIMEOUT         bound in seconds for each wait         (300)
#   BENCH_ONLY            all | postfix | sluice                 (all)
#   BENCH_POSTFIX_PORT    (2626)   BENCH_SLUICE_PORT (2627)     loopback only
#   BENCH_KEEP            1: keep the temp dir (logs, configs, maildirs)
#
# Exit status: 0 all parts ran and the idle check is within its limit,
# 1 a part failed (setup, delivery, crash, timeout), 3 the idle check
# held fewer connections than asked or went over the RSS limit.
set -euo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=/usr/bin/python3

MESSAGES=${BENCH_MESSAGES:-3000}
SESSIONS=${BENCH_SESSIONS:-20}
SIZE=${BENCH_SIZE:-5120}
REUSE=${BENCH_REUSE:-1}
IDLE_CONNS=${BENCH_IDLE_CONNS:-1000}
IDLE_LIMIT_MB=${BENCH_IDLE_LIMIT_MB:-100}
TIMEOUT=${BENCH_TIMEOUT:-300}
ONLY=${BENCH_ONLY:-all}
PF_PORT=${BENCH_POSTFIX_PORT:-2626}
SL_PORT=${BENCH_SLUICE_PORT:-2627}
KEEP=${BENCH_KEEP:-0}
HOST=127.0.0.1   # never anything but loopback

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
fcalc() { awk "BEGIN { printf \"$1\", $2 }"; }

for v in MESSAGES:BENCH_MESSAGES SESSIONS:BENCH_SESSIONS SIZE:BENCH_SIZE \
         IDLE_CONNS:BENCH_IDLE_CONNS IDLE_LIMIT_MB:BENCH_IDLE_LIMIT_MB TIMEOUT:BENCH_TIMEOUT \
         PF_PORT:BENCH_POSTFIX_PORT SL_PORT:BENCH_SLUICE_PORT; do
    val=${v%%:*}
    [[ ${!val} =~ ^[0-9]+$ ]] && (( ${!val} > 0 )) || die "${v#*:} must be a positive integer (got '${!val}')"
done
(( TIMEOUT >= 30 )) || die "BENCH_TIMEOUT must be at least 30"
[[ $REUSE == 0 || $REUSE == 1 ]] || die "BENCH_REUSE must be 0 or 1"
case $ONLY in all|postfix|sluice) ;; *) die "BENCH_ONLY must be all, postfix or sluice";; esac
(( EUID == 0 )) || die "must run as root (a private Postfix instance needs root to start)"

RUN_POSTFIX=0; RUN_SLUICE=0
[[ $ONLY == all || $ONLY == postfix ]] && RUN_POSTFIX=1
[[ $ONLY == all || $ONLY == sluice ]] && RUN_SLUICE=1
if (( RUN_SLUICE )); then
    [[ -n ${SLUICE_BIN:-} ]] || die "SLUICE_BIN is not set (use BENCH_ONLY=postfix to run only the baseline)"
    [[ -x $SLUICE_BIN ]] || die "SLUICE_BIN=$SLUICE_BIN is not an executable file"
    SLUICE_BIN=$(readlink -f "$SLUICE_BIN")
fi

# ---------------------------------------------------------------- state/cleanup
WORK=""
PF_ETC=""; PF_STARTED=0
SL_PID=""
SYSTEM_PF_STARTED_BY_US=0
BG_PIDS=()
FAILED=0
IDLE_BAD=0

system_postfix_running() {
    # The default instance (config /etc/postfix); quiet if unconfigured.
    [[ -f /etc/postfix/main.cf ]] && postfix status >/dev/null 2>&1
}

pid_alive() { [[ -n ${1:-} && -d /proc/$1 ]] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

stop_sluice() {
    # SIGTERM, wait up to 20 s, then SIGKILL. Sets SL_STOP_STATUS.
    SL_STOP_STATUS=""
    [[ -n $SL_PID ]] || return 0
    local how="exited with status %d after SIGTERM" i rc=0
    if pid_alive "$SL_PID"; then
        kill -TERM "$SL_PID" 2>/dev/null || true
        for ((i = 0; i < 200; i++)); do pid_alive "$SL_PID" || break; sleep 0.1; done
        if pid_alive "$SL_PID"; then
            kill -KILL "$SL_PID" 2>/dev/null || true
            how="did not exit within 20 s of SIGTERM, killed (status %d)"
        fi
    else
        how="had already exited with status %d"
    fi
    wait "$SL_PID" 2>/dev/null || rc=$?
    # shellcheck disable=SC2059
    SL_STOP_STATUS=$(printf "$how" "$rc")
    SL_PID=""
}

stop_private_postfix() {
    (( PF_STARTED )) || return 0
    local mpid
    mpid=$(tr -d ' \n' < "$PF_Q/pid/master.pid" 2>/dev/null || true)
    timeout 60 postfix -c "$PF_ETC" stop >/dev/null 2>&1 || true
    local i
    for ((i = 0; i < 100; i++)); do pid_alive "$mpid" || break; sleep 0.1; done
    if pid_alive "$mpid"; then
        log "private postfix did not stop, aborting it"
        timeout 30 postfix -c "$PF_ETC" abort >/dev/null 2>&1 || true
        sleep 1
        pid_alive "$mpid" && kill -KILL "$mpid" 2>/dev/null
    fi
    PF_STARTED=0
}

# Each server gets a fresh ext4 file system (a loop-mounted sparse image) when the machine
# allows it: ext4 slows inode allocation after many recent deletions, so a server measured
# on a disk the other one (or a previous run) just churned would pay for their deletions.
# BENCH_FRESH_FS=0 measures in /tmp directly.
FRESH_FS=${BENCH_FRESH_FS:-1}
MOUNTS=()
fresh_fs() {
    local dir=$1 img="$1.img"
    mkdir -p "$dir"
    (( FRESH_FS )) || return 0
    if truncate -s 4G "$img" && mkfs.ext4 -q -F "$img" >/dev/null 2>&1 && mount -o loop "$img" "$dir" 2>/dev/null; then
        chmod 755 "$dir"
        MOUNTS+=("$dir")
        log "fresh ext4 file system for $(basename "$dir")"
    else
        rm -f "$img"
        log "no fresh file system for $(basename "$dir") (loop mount unavailable); measuring in $WORK"
    fi
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    set +e
    local p
    for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    stop_sluice
    stop_private_postfix
    if (( SYSTEM_PF_STARTED_BY_US )) && system_postfix_running; then
        postfix stop >/dev/null 2>&1
    fi
    local m
    for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- dependencies
ensure_deps() {
    local pkgs=()
    command -v postfix >/dev/null && command -v smtp-source >/dev/null \
        && [[ -x /usr/lib/postfix/sbin/virtual ]] || pkgs+=(postfix)
    [[ -x $PY ]] || pkgs+=(python3)
    command -v timeout >/dev/null || pkgs+=(coreutils)
    command -v find >/dev/null || pkgs+=(findutils)
    command -v awk >/dev/null || pkgs+=(mawk)
    command -v ps >/dev/null || pkgs+=(procps)
    (( ${#pkgs[@]} )) || return 0

    local was_running=0
    system_postfix_running && was_running=1
    log "installing: ${pkgs[*]}"
    if [[ " ${pkgs[*]} " == *" postfix "* ]] && ! dpkg -s postfix >/dev/null 2>&1; then
        # We only need the binaries; keep the system instance unconfigured.
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    fi
    apt-get update >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >&2 \
        || die "apt-get install ${pkgs[*]} failed"
    if (( ! was_running )) && system_postfix_running; then
        log "stopping the system postfix that the package install started"
        SYSTEM_PF_STARTED_BY_US=1
        postfix stop >/dev/null 2>&1 || true
    fi
}
ensure_deps
getent passwd postfix >/dev/null || die "no 'postfix' user (broken postfix install?)"
getent group postdrop >/dev/null || die "no 'postdrop' group (broken postfix install?)"

# Enough descriptors for sluice's idle test and for the load generator.
want_nofile=$(( IDLE_CONNS * 2 + 1024 )); (( want_nofile < 65536 )) && want_nofile=65536
hard_nofile=$(ulimit -Hn)
if [[ $hard_nofile != unlimited ]] && (( hard_nofile < want_nofile )); then
    ulimit -Hn "$want_nofile" 2>/dev/null || want_nofile=$hard_nofile
fi
(( $(ulimit -n) >= want_nofile )) 2>/dev/null || ulimit -n "$want_nofile" 2>/dev/null \
    || log "could not raise ulimit -n to $want_nofile (now $(ulimit -n))"

WORK=$(mktemp -d /tmp/sluice-bench.XXXXXX)
chmod 755 "$WORK"   # the postfix user must be able to traverse it
log "work dir $WORK; $MESSAGES msgs x $SIZE bytes, $SESSIONS sessions, reuse=$REUSE"

# ---------------------------------------------------------------- helpers
port_listening() {  # is anything listening on TCP port $1 (any address)?
    local hex; hex=$(printf ':%04X' "$1")
    awk -v p="$hex" 'FNR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { f = 1 }
                     END { exit !f }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

wait_port() {  # wait_port PORT PID-that-must-stay-alive(optional)
    local deadline=$(( SECONDS + 30 ))
    until port_listening "$1"; do
        if [[ -n ${2:-} ]] && ! pid_alive "$2"; then return 1; fi
        (( SECONDS < deadline )) || return 1
        sleep 0.1
    done
}

count_files() { find "$1" -maxdepth 1 -type f 2>/dev/null | wc -l || true; }
# last lines of a file on one line; never fails (safe inside assignments under set -e)
tailf() { tail -n "${2:-3}" "$1" 2>/dev/null | tr '\n' ' ' || true; }

SRC_FLAGS=(-4 -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -M client.test
           -f bench@client.test -t bench@example.test)
(( REUSE )) && SRC_FLAGS=(-d "${SRC_FLAGS[@]}")

# measure NAME PORT NEWDIR SAMPLER-ROOT-ARGS...
# Sets R_ERR R_ELAPSED R_SRC R_RATE R_RSS_KB R_PSS_KB R_PROCS; returns 1 on failure.
measure() {
    local name=$1 port=$2 newdir=$3; shift 3
    local out="$WORK/$name-rss.txt" srclog="$WORK/$name-smtp-source.log"
    R_ERR=""; R_ELAPSED=0; R_SRC=0; R_RATE=0
    R_RSS_KB=0; R_PSS_KB=0; R_PROCS=0

    "$PY" "$HERE/rss_sampler.py" "$@" --out "$out" --interval 0.1 \
        --max-seconds $(( TIMEOUT * 2 + 60 )) &
    local spid=$!
    BG_PIDS+=("$spid")
    local i
    for ((i = 0; i < 100; i++)); do [[ -s $out ]] && break; sleep 0.05; done

    log "$name: smtp-source ${SRC_FLAGS[*]} $HOST:$port"
    local t0 t1 src_rc=0
    t0=$(now)
    # In the background + wait, so that a signal to this script is handled at once.
    timeout -k 5 "$TIMEOUT" smtp-source "${SRC_FLAGS[@]}" "$HOST:$port" >"$srclog" 2>&1 &
    BG_PIDS+=("$!")
    wait "$!" || src_rc=$?
    t1=$(now)
    R_SRC=$(fcalc %.3f "$t1 - $t0")

    local deadline n
    if (( src_rc == 0 )); then
        deadline=$(fcalc %d "$t0 + $TIMEOUT")
    else
        local note=""
        (( src_rc == 124 )) && note=" (timed out after ${TIMEOUT}s)"
        R_ERR="smtp-source exit status $src_rc$note: $(tailf "$srclog")"
        deadline=$(( $(date +%s) + 5 ))
    fi
    while :; do
        n=$(count_files "$newdir")
        (( n >= MESSAGES )) && break
        (( $(date +%s) < deadline )) || break
        sleep 0.1
    done

    kill -TERM "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    if [[ -s $out ]]; then
        R_RSS_KB=$(sed -n 's/^peak_rss_kb=//p' "$out")
        R_PSS_KB=$(sed -n 's/^peak_pss_kb=//p' "$out")
        R_PROCS=$(sed -n 's/^peak_procs=//p' "$out")
    fi

    if (( n < MESSAGES )); then
        [[ -n $R_ERR ]] || R_ERR="only $n of $MESSAGES messages delivered to $newdir within ${TIMEOUT}s"
        return 1
    fi
    [[ -z $R_ERR ]] || return 1
    # End of the run = the later of the client finishing and the last
    # message landing in new/ (mtime is set when the file was written).
    local last
    last=$(find "$newdir" -maxdepth 1 -type f -printf '%T@\n' | sort -n | tail -n 1)
    R_ELAPSED=$(fcalc %.3f "($last > $t1 ? $last : $t1) - $t0")
    R_RATE=$(fcalc %.1f "$MESSAGES / $R_ELAPSED")
    # Sanity: a delivered message carries the whole payload (maildir files
    # may store LF instead of CRLF, about 1 byte in 80 less).
    local f sz
    f=$(find "$newdir" -maxdepth 1 -type f -print -quit)
    sz=$(stat -c %s "$f")
    if (( sz < SIZE * 95 / 100 )); then
        R_ERR="delivered message $f is only $sz bytes (payload was $SIZE)"
        return 1
    fi
}

# ---------------------------------------------------------------- postfix
PF_OK=0; PF_LINE=""
run_postfix() {
    local base="$WORK/postfix"
    fresh_fs "$base"
    PF_ETC="$base/etc"; PF_Q="$base/queue"
    local data="$base/data" vmail="$base/vmail" maillog="$base/maillog"
    local uid gid
    uid=$(id -u postfix); gid=$(id -g postfix)
    mkdir -p "$PF_ETC" "$PF_Q" "$data" "$vmail"
    chown postfix:postfix "$data" "$vmail"
    # smtpd's default process limit is 100; leave room for larger -s.
    local smtpd_max=100
    (( SESSIONS + 10 > smtpd_max )) && smtpd_max=$(( SESSIONS + 10 ))

    cat >"$PF_ETC/main.cf" <<EOF
# Private benchmark instance, generated by scripts/bench/run.sh
compatibility_level = 3.6
queue_directory = $PF_Q
data_directory = $data
# meta_directory (postfix-files, dynamicmaps.cf) stays the system default
meta_directory = /etc/postfix
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = \$myhostname
mydestination =
relayhost =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtpd_banner = \$myhostname ESMTP
virtual_mailbox_domains = example.test
virtual_mailbox_base = $vmail
virtual_mailbox_maps = static:example.test/bench/
virtual_minimum_uid = $uid
virtual_uid_maps = static:$uid
virtual_gid_maps = static:$gid
# no syslog daemon is assumed: log to a file through postlogd
maillog_file = $maillog
maillog_file_prefixes = $base
EOF

    cat >"$PF_ETC/master.cf" <<EOF
# service type  private unpriv  chroot  wakeup  maxproc command
$HOST:$PF_PORT inet n   -       n       -       $smtpd_max smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF

    port_listening "$PF_PORT" && { PF_LINE="port $PF_PORT is already in use"; return 1; }
    if ! postfix -c "$PF_ETC" check >"$base/check.log" 2>&1; then
        PF_LINE="postfix check failed: $(tailf "$base/check.log")"; return 1
    fi
    PF_STARTED=1
    if ! timeout 60 postfix -c "$PF_ETC" start >"$base/start.log" 2>&1; then
        PF_LINE="postfix start failed: $(tailf "$base/start.log")"; return 1
    fi
    if ! wait_port "$PF_PORT"; then
        PF_LINE="postfix is not listening on $HOST:$PF_PORT after 30 s: $(tailf "$maillog")"
        return 1
    fi
    log "postfix: private instance up (config $PF_ETC)"

    if ! measure postfix "$PF_PORT" "$vmail/example.test/bench/new" --pidfile "$PF_Q/pid/master.pid"; then
        PF_LINE="$R_ERR"
        [[ -f $maillog ]] && log "postfix maillog tail:" && tail -n 5 "$maillog" >&2
        stop_private_postfix
        return 1
    fi
    PF_ELAPSED=$R_ELAPSED; PF_RATE=$R_RATE; PF_RSS_KB=$R_RSS_KB
    PF_PSS_KB=$R_PSS_KB; PF_PROCS=$R_PROCS; PF_SRC=$R_SRC
    stop_private_postfix
    PF_OK=1
}

# ---------------------------------------------------------------- sluice
write_sluice_conf() {  # DIR PORT EXTRA-SERVER-LINES
    mkdir -p "$1"
    cat >"$1/pipeline.conf" <<EOF
[server]
hostname = "mx.example.test"
spool = "spool"
$3
[[listener]]
address = "$HOST:$2"

[[route]]
domains = ["example.test"]
to = "maildir:mail"

[[stage]]
use = "access"
deny_clients = ["192.0.2.0/24"]

[[stage]]
use = "size-limit"
max_bytes = 10485760
EOF
}

start_sluice() {  # DIR -> SL_PID, or returns 1 with SL_LINE set
    local dir=$1
    port_listening "$SL_PORT" && { SL_LINE="port $SL_PORT is already in use"; return 1; }
    ( cd "$dir" && exec "$SLUICE_BIN" run --config "$dir/pipeline.conf" ) >"$dir/sluice.log" 2>&1 &
    SL_PID=$!
    if ! wait_port "$SL_PORT" "$SL_PID"; then
        if pid_alive "$SL_PID"; then
            SL_LINE="sluice is not listening on $HOST:$SL_PORT after 30 s"
        else
            SL_LINE="sluice exited at startup"
        fi
        stop_sluice
        SL_LINE+=" ($SL_STOP_STATUS); log: $(tailf "$dir/sluice.log")"
        return 1
    fi
}

SL_OK=0; SL_LINE=""
run_sluice() {
    local dir="$WORK/sluice"
    fresh_fs "$dir"
    write_sluice_conf "$dir" "$SL_PORT" ""
    start_sluice "$dir" || return 1
    log "sluice: up (pid $SL_PID, config $dir/pipeline.conf)"
    local newdir="$dir/mail/example.test/bench/new"
    if ! measure sluice "$SL_PORT" "$newdir" --pid "$SL_PID"; then
        SL_LINE="$R_ERR"
        if [[ ! -d $newdir && -d $dir/mail ]]; then
            SL_LINE+="; maildirs found: $(find "$dir/mail" -type d -name new | tr '\n' ' ')"
        fi
        pid_alive "$SL_PID" || SL_LINE+="; sluice died: $(tailf "$dir/sluice.log")"
        stop_sluice
        return 1
    fi
    SL_ELAPSED=$R_ELAPSED; SL_RATE=$R_RATE; SL_RSS_KB=$R_RSS_KB
    SL_PSS_KB=$R_PSS_KB; SL_PROCS=$R_PROCS; SL_SRC=$R_SRC
    local alive=1
    pid_alive "$SL_PID" || alive=0
    stop_sluice
    SL_TERM=$SL_STOP_STATUS
    if (( ! alive )); then
        SL_LINE="sluice died during the run: $(tailf "$dir/sluice.log")"
        return 1
    fi
    SL_OK=1
}

IDLE_OK=0; IDLE_LINE=""
run_idle() {
    local dir="$WORK/sluice-idle"
    write_sluice_conf "$dir" "$SL_PORT" $'max_connections = 2000\nmax_connections_per_ip = 2000'
    start_sluice "$dir" || { IDLE_LINE="$SL_LINE"; return 1; }
    log "idle: opening $IDLE_CONNS connections to sluice (pid $SL_PID)"
    local res rc=0
    timeout -k 5 "$TIMEOUT" "$PY" "$HERE/idle_conns.py" --host "$HOST" --port "$SL_PORT" \
        --count "$IDLE_CONNS" --pid "$SL_PID" --settle 2 --timeout $(( TIMEOUT - 10 )) \
        >"$dir/idle.out" 2>"$dir/idle.err" &
    BG_PIDS+=("$!")
    wait "$!" || rc=$?
    res=$(cat "$dir/idle.out")
    local held rss base err
    held=$(sed -n 's/.*held=\([0-9]*\).*/\1/p' <<<"$res")
    rss=$(sed -n 's/.* rss_kb=\([0-9]*\).*/\1/p' <<<"$res")
    base=$(sed -n 's/.*baseline_rss_kb=\([0-9]*\).*/\1/p' <<<"$res")
    err=$(sed -n 's/.*first_error=\(.*\)/\1/p' <<<"$res")
    local alive=1
    pid_alive "$SL_PID" || alive=0
    stop_sluice
    IDLE_TERM=$SL_STOP_STATUS
    if [[ -z $held || -z $rss ]]; then
        IDLE_LINE="idle_conns.py failed (status $rc): $(tailf "$dir/idle.err")"
        return 1
    fi
    (( alive )) || { IDLE_LINE="sluice died during the idle test: $(tailf "$dir/sluice.log")"; return 1; }
    IDLE_HELD=$held; IDLE_RSS_KB=$rss; IDLE_BASE_KB=$base; IDLE_ERR=$err
    IDLE_OK=1
}

# ---------------------------------------------------------------- run
if (( RUN_POSTFIX )); then
    run_postfix || { FAILED=1; log "postfix: FAILED: $PF_LINE"; }
fi
if (( RUN_SLUICE )); then
    run_sluice || { FAILED=1; log "sluice: FAILED: $SL_LINE"; }
    run_idle || { FAILED=1; log "idle: FAILED: $IDLE_LINE"; }
fi

# ---------------------------------------------------------------- summary
mb() { fcalc %.1f "$1 / 1024"; }
echo
echo "== details =="
echo "load: smtp-source ${SRC_FLAGS[*]} (messages=$MESSAGES sessions=$SESSIONS size=$SIZE reuse=$REUSE)"
if (( PF_OK )); then
    echo "postfix: client done after $PF_SRC s, last delivery at $PF_ELAPSED s; RSS/PSS summed over up to $PF_PROCS processes"
fi
if (( SL_OK )); then
    echo "sluice:  client done after $SL_SRC s, last delivery at $SL_ELAPSED s; up to $SL_PROCS processes; $SL_TERM"
fi
if (( IDLE_OK )); then
    echo "idle:    sluice RSS before connecting $(mb "$IDLE_BASE_KB") MB; $IDLE_TERM"
    [[ $IDLE_ERR == - ]] || echo "idle:    first connection error: $IDLE_ERR"
fi
echo
echo "== summary =="
if (( RUN_POSTFIX )); then
    if (( PF_OK )); then
        printf 'postfix: %d msgs in %.2f s = %.0f msgs/s, peak RSS %s MB (PSS %s MB)\n' \
            "$MESSAGES" "$PF_ELAPSED" "$PF_RATE" "$(mb "$PF_RSS_KB")" "$(mb "$PF_PSS_KB")"
    else
        echo "postfix: FAILED: $PF_LINE"
    fi
fi
if (( RUN_SLUICE )); then
    if (( SL_OK )); then
        printf 'sluice:  %d msgs in %.2f s = %.0f msgs/s, peak RSS %s MB (PSS %s MB)\n' \
            "$MESSAGES" "$SL_ELAPSED" "$SL_RATE" "$(mb "$SL_RSS_KB")" "$(mb "$SL_PSS_KB")"
    else
        echo "sluice:  FAILED: $SL_LINE"
    fi
fi
if (( PF_OK && SL_OK )); then
    echo "ratio sluice/postfix: $(fcalc %.2f "$SL_RATE / $PF_RATE")"
fi
if (( RUN_SLUICE )); then
    if (( IDLE_OK )); then
        verdict=""
        if (( IDLE_HELD < IDLE_CONNS )); then
            verdict=" -- FAIL: only $IDLE_HELD of $IDLE_CONNS held"; IDLE_BAD=1
        fi
        if (( IDLE_RSS_KB > IDLE_LIMIT_MB * 1024 )); then
            verdict+=" -- FAIL: over the limit"; IDLE_BAD=1
        fi
        echo "idle: $IDLE_HELD connections held, sluice RSS $(mb "$IDLE_RSS_KB") MB (limit $IDLE_LIMIT_MB MB)$verdict"
    else
        echo "idle: FAILED: $IDLE_LINE"
    fi
fi

(( FAILED )) && exit 1
(( IDLE_BAD )) && exit 3
exit 0
