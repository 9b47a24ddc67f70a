#!/usr/bin/env bash
# Sluice benchmark harness: Postfix baseline vs Sluice (maildir delivery, then
# relay to an smtp-sink next hop), an idle-connection memory check,
# Sluice's acceptance rate with delivery on vs alone, and the maildir run over STARTTLS
# with one connection per message (tls_load.py).  See scripts/bench/README.md.
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
#   BENCH_ONLY            all, or a comma list of servers (postfix, sluice) and/or
#                         scenarios (maildir = maildir throughput + idle check, relay,
#                         spf = the maildir run again with the spf stage,
#                         tls = maildir delivery over STARTTLS, a connection per message);
#                         an omitted kind means all of that kind  (all)
#   BENCH_ACCEPT_TARGET   % of the acceptance rate alone that acceptance with delivery
#                         on must reach                          (80)
#   BENCH_SPF_TARGET      % of the maildir rate that the same run with the spf stage
#                         (warm cache, local DNS) must reach     (80)
#   BENCH_DNS_PORT        (2629)   the local DNS server (dnslib) for the spf run
#   BENCH_TLS_MESSAGES    messages in the tls run (one connection each)   (1000)
#   BENCH_TLS_PROCS       processes of the tls client (tls_load.py)       (1)
#   BENCH_TLS_KEY         ecdsa (P-256) or rsa (2048): the key of the certificate
#                         both servers use in the tls run                 (ecdsa)
#   BENCH_POSTFIX_PORT    (2626)   BENCH_SLUICE_PORT (2627)     loopback only
#   BENCH_SINK_PORT       (2628)   smtp-sink, the relay next hop  loopback only
#   BENCH_KEEP            1: keep the temp dir (logs, configs, maildirs)
#
# Exit status: 0 all parts ran and the checks passed, 1 a part failed (setup,
# delivery, crash, timeout), 3 the idle check held fewer connections than
# asked or went over the RSS limit, 4 acceptance with delivery on was below
# BENCH_ACCEPT_TARGET % of acceptance alone, 5 the spf run was below BENCH_SPF_TARGET %.
# shellcheck disable=SC2153  # PF_*, SL_*, PFR_*, SLR_*, SLA_*, PFT_*, SLT_* results are set by save_result
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
ACCEPT_TARGET=${BENCH_ACCEPT_TARGET:-80}
SPF_TARGET=${BENCH_SPF_TARGET:-80}
DNS_PORT=${BENCH_DNS_PORT:-2629}
TLS_MESSAGES=${BENCH_TLS_MESSAGES:-1000}
TLS_PROCS=${BENCH_TLS_PROCS:-1}
TLS_KEY=${BENCH_TLS_KEY:-ecdsa}
PF_PORT=${BENCH_POSTFIX_PORT:-2626}
SL_PORT=${BENCH_SLUICE_PORT:-2627}
SINK_PORT=${BENCH_SINK_PORT:-2628}
KEEP=${BENCH_KEEP:-0}
HOST=127.0.0.1   # never anything but loopback

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
fcalc() { awk "BEGIN { printf \"$1\", $2 }"; }

for v in MESSAGES:BENCH_MESSAGES SESSIONS:BENCH_SESSIONS SIZE:BENCH_SIZE \
         IDLE_CONNS:BENCH_IDLE_CONNS IDLE_LIMIT_MB:BENCH_IDLE_LIMIT_MB TIMEOUT:BENCH_TIMEOUT \
         PF_PORT:BENCH_POSTFIX_PORT SL_PORT:BENCH_SLUICE_PORT SINK_PORT:BENCH_SINK_PORT \
         ACCEPT_TARGET:BENCH_ACCEPT_TARGET SPF_TARGET:BENCH_SPF_TARGET DNS_PORT:BENCH_DNS_PORT \
         TLS_MESSAGES:BENCH_TLS_MESSAGES TLS_PROCS:BENCH_TLS_PROCS; do
    val=${v%%:*}
    [[ ${!val} =~ ^[0-9]+$ ]] && (( ${!val} > 0 )) || die "${v#*:} must be a positive integer (got '${!val}')"
done
(( TIMEOUT >= 30 )) || die "BENCH_TIMEOUT must be at least 30"
[[ $REUSE == 0 || $REUSE == 1 ]] || die "BENCH_REUSE must be 0 or 1"
[[ $TLS_KEY == ecdsa || $TLS_KEY == rsa ]] || die "BENCH_TLS_KEY must be ecdsa or rsa"
(( PF_PORT != SL_PORT && PF_PORT != SINK_PORT && SL_PORT != SINK_PORT )) \
    || die "BENCH_POSTFIX_PORT, BENCH_SLUICE_PORT and BENCH_SINK_PORT must differ"
RUN_POSTFIX=0; RUN_SLUICE=0; RUN_MAILDIR=0; RUN_RELAY=0; RUN_SPF=0; RUN_TLS=0
IFS=', ' read -ra only_words <<<"$ONLY"
for w in "${only_words[@]}"; do
    case $w in
        ''|all) ;;
        postfix) RUN_POSTFIX=1 ;;
        sluice) RUN_SLUICE=1 ;;
        maildir) RUN_MAILDIR=1 ;;
        relay) RUN_RELAY=1 ;;
        spf) RUN_SPF=1 ;;
        tls) RUN_TLS=1 ;;
        *) die "BENCH_ONLY: unknown word '$w' (all, postfix, sluice, maildir, relay, spf, tls)" ;;
    esac
done
(( RUN_POSTFIX || RUN_SLUICE )) || { RUN_POSTFIX=1; RUN_SLUICE=1; }
(( RUN_MAILDIR || RUN_RELAY || RUN_SPF || RUN_TLS )) || { RUN_MAILDIR=1; RUN_RELAY=1; RUN_SPF=1; RUN_TLS=1; }
# The spf run is compared with the plain maildir run of the same invocation.
(( RUN_SPF )) && RUN_MAILDIR=1
(( EUID == 0 )) || die "must run as root (a private Postfix instance needs root to start)"
if (( RUN_SLUICE )); then
    [[ -n ${SLUICE_BIN:-} ]] || die "SLUICE_BIN is not set (use BENCH_ONLY=postfix to run only the baseline)"
    [[ -x $SLUICE_BIN ]] || die "SLUICE_BIN=$SLUICE_BIN is not an executable file"
    SLUICE_BIN=$(readlink -f "$SLUICE_BIN")
fi

# ---------------------------------------------------------------- state/cleanup
WORK=""
PF_ETC=""; PF_STARTED=0
SL_PID=""
SINK_PID=""; WATCH_PID=""
SYSTEM_PF_STARTED_BY_US=0
BG_PIDS=()
FAILED=0
IDLE_BAD=0
ACCEPT_BAD=0
SPF_BAD=0
DNS_PID=""

system_postfix_running() {
    # The default instance (config /etc/postfix); quiet if unconfigured.
    [[ -f /etc/postfix/main.cf ]] && postfix status >/dev/null 2>&1
}

# A process that is gone, or a zombie, is not alive.  (Reading the state in one step: a
# zombie reaped between a -d test and the read must not count as alive.)
pid_alive() {
    local st
    [[ -n ${1:-} ]] || return 1
    st=$(grep -m 1 '^State:' "/proc/$1/status" 2>/dev/null) || return 1
    [[ $st != *Z* && $st != *X* ]]
}

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

stop_sink() {
    # smtp-sink first (SIGTERM, then SIGKILL after 5 s); its watcher then sees EOF.
    local p i
    for p in "$SINK_PID" "$WATCH_PID"; do
        [[ -n $p ]] || continue
        pid_alive "$p" && kill -TERM "$p" 2>/dev/null
        for ((i = 0; i < 50; i++)); do pid_alive "$p" || break; sleep 0.1; done
        pid_alive "$p" && kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null || true
    done
    SINK_PID=""; WATCH_PID=""
    return 0
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
    stop_sink
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
        && command -v smtp-sink >/dev/null \
        && [[ -x /usr/lib/postfix/sbin/virtual ]] || pkgs+=(postfix)
    [[ -x $PY ]] || pkgs+=(python3)
    "$PY" -c 'import dnslib' 2>/dev/null || pkgs+=(python3-dnslib)
    command -v timeout >/dev/null || pkgs+=(coreutils)
    command -v find >/dev/null || pkgs+=(findutils)
    command -v awk >/dev/null || pkgs+=(mawk)
    command -v ps >/dev/null || pkgs+=(procps)
    command -v openssl >/dev/null || pkgs+=(openssl)
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
# The load command of measure (HOST:PORT is appended) and the name of its log.  The tls
# runs override both, and MESSAGES, with locals of their own (bash's dynamic scope).
LOAD=(smtp-source "${SRC_FLAGS[@]}")
LOAD_NAME=smtp-source
# Busy CPU time of the whole machine so far, in seconds (from /proc/stat).
cpu_busy() { awk '$1 == "cpu" { print ($2 + $3 + $4 + $7 + $8) / 100; exit }' /proc/stat; }

# Messages counted by smtp-sink so far, from a sink_watch.py events file.
sink_count() { tail -n 1 "$1" 2>/dev/null | awk '{ n = $2 } END { print n + 0 }' || true; }

# measure NAME PORT KIND TARGET SAMPLER-ROOT-ARGS...
#   KIND maildir: TARGET is the maildir's new/; done when it holds MESSAGES files; the
#                 end is the later of the client finishing and the newest file's mtime.
#   KIND sink:    TARGET is a sink_watch.py events file; done when smtp-sink has counted
#                 MESSAGES; the end is the later of the client finishing and that moment.
#   KIND accept:  TARGET is the spool's queue/; done when it holds MESSAGES files; the end
#                 is the client finishing (only acceptance is measured).
# Sets R_ERR R_ELAPSED R_SRC R_RATE R_ACC_RATE R_RSS_KB R_PSS_KB R_PROCS, R_CPU (busy CPU
# seconds of the whole machine from the start to the end of the wait) and R_LOG (the load
# command's output); returns 1 on failure.
measure() {
    local name=$1 port=$2 kind=$3 target=$4; shift 4
    local out="$WORK/$name-rss.txt" srclog="$WORK/$name-$LOAD_NAME.log"
    R_ERR=""; R_ELAPSED=0; R_SRC=0; R_RATE=0; R_ACC_RATE=0
    R_RSS_KB=0; R_PSS_KB=0; R_PROCS=0; R_CPU=0; R_LOG=$srclog

    "$PY" "$HERE/rss_sampler.py" "$@" --out "$out" --interval 0.1 \
        --max-seconds $(( TIMEOUT * 2 + 60 )) &
    local spid=$!
    BG_PIDS+=("$spid")
    local i
    for ((i = 0; i < 100; i++)); do [[ -s $out ]] && break; sleep 0.05; done

    log "$name: ${LOAD[*]##*/} $HOST:$port"
    local t0 t1 src_rc=0 cpu0
    cpu0=$(cpu_busy)
    t0=$(now)
    # In the background + wait, so that a signal to this script is handled at once.
    timeout -k 5 "$TIMEOUT" "${LOAD[@]}" "$HOST:$port" >"$srclog" 2>&1 &
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
        R_ERR="$LOAD_NAME exit status $src_rc$note: $(tailf "$srclog")"
        deadline=$(( $(date +%s) + 5 ))
    fi
    while :; do
        case $kind in
            sink) n=$(sink_count "$target") ;;
            *) n=$(count_files "$target") ;;
        esac
        (( n >= MESSAGES )) && break
        (( $(date +%s) < deadline )) || break
        sleep 0.1
    done
    R_CPU=$(fcalc %.2f "$(cpu_busy) - $cpu0")

    kill -TERM "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    if [[ -s $out ]]; then
        R_RSS_KB=$(sed -n 's/^peak_rss_kb=//p' "$out")
        R_PSS_KB=$(sed -n 's/^peak_pss_kb=//p' "$out")
        R_PROCS=$(sed -n 's/^peak_procs=//p' "$out")
    fi

    if (( n < MESSAGES )); then
        if [[ -z $R_ERR ]]; then
            case $kind in
                maildir) R_ERR="only $n of $MESSAGES messages delivered to $target within ${TIMEOUT}s" ;;
                sink) R_ERR="smtp-sink received only $n of $MESSAGES messages within ${TIMEOUT}s" ;;
                accept) R_ERR="only $n of $MESSAGES messages in $target after the client finished" ;;
            esac
        fi
        return 1
    fi
    [[ -z $R_ERR ]] || return 1
    R_ACC_RATE=$(fcalc %.1f "$MESSAGES / $R_SRC")
    local last
    case $kind in
        maildir)
            # End of the run = the later of the client finishing and the last
            # message landing in new/ (mtime is set when the file was written).
            last=$(find "$target" -maxdepth 1 -type f -printf '%T@\n' | sort -n | tail -n 1) ;;
        sink)
            # sink_watch.py stamped the moment the counter first reached MESSAGES.
            last=$(awk -v m="$MESSAGES" '$2 >= m { print $1; exit }' "$target") ;;
        accept)
            last=$t1 ;;
    esac
    R_ELAPSED=$(fcalc %.3f "($last > $t1 ? $last : $t1) - $t0")
    R_RATE=$(fcalc %.1f "$MESSAGES / $R_ELAPSED")
    if [[ $kind == maildir ]]; then
        # Sanity: a delivered message carries the whole payload (maildir files
        # may store LF instead of CRLF, about 1 byte in 80 less).
        local f sz
        f=$(find "$target" -maxdepth 1 -type f -print -quit)
        sz=$(stat -c %s "$f")
        if (( sz < SIZE * 95 / 100 )); then
            R_ERR="delivered message $f is only $sz bytes (payload was $SIZE)"
            return 1
        fi
    fi
}

# save_result PREFIX: copy the R_* results of the last measure into PREFIX_*.
save_result() {
    printf -v "${1}_ELAPSED" %s "$R_ELAPSED"; printf -v "${1}_SRC" %s "$R_SRC"
    printf -v "${1}_RATE" %s "$R_RATE"; printf -v "${1}_ACC_RATE" %s "$R_ACC_RATE"
    printf -v "${1}_RSS_KB" %s "$R_RSS_KB"; printf -v "${1}_PSS_KB" %s "$R_PSS_KB"
    printf -v "${1}_PROCS" %s "$R_PROCS"; printf -v "${1}_CPU" %s "$R_CPU"
}

# ---------------------------------------------------------------- tls helpers
# One self-signed certificate (mx.example.test, BENCH_TLS_KEY) for both servers.
TLS_DIR=""
make_tls_cert() {
    local dir="$WORK/tls" alg=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
    [[ $TLS_KEY == rsa ]] && alg=(-newkey rsa:2048)
    mkdir -p "$dir"
    openssl req -x509 "${alg[@]}" -nodes -days 30 -subj /CN=mx.example.test \
        -addext subjectAltName=DNS:mx.example.test \
        -keyout "$dir/key.pem" -out "$dir/cert.pem" >"$dir/openssl.log" 2>&1 || return 1
    chmod 600 "$dir/key.pem"
    TLS_DIR=$dir
}

# For a tls run that has made MESSAGES, LOAD and LOAD_NAME local: measure then runs
# tls_load.py (STARTTLS, a new connection per message) for BENCH_TLS_MESSAGES messages.
tls_load() {
    MESSAGES=$TLS_MESSAGES
    LOAD=("$PY" "$HERE/tls_load.py" --messages "$TLS_MESSAGES" --workers "$SESSIONS"
          --size "$SIZE" --procs "$TLS_PROCS" --timeout $(( TIMEOUT - 10 )))
    LOAD_NAME=tls_load
}

# CPU seconds used so far by a process tree: utime + stime + cutime + cstime of the root
# and every descendant (a child that exits moves its time into its parent's cutime, so
# the difference of two readings is the tree's CPU in between).
tree_cpu() {
    "$PY" - "$1" <<'EOF'
import os, sys
root, tree, hz = int(sys.argv[1]), {}, os.sysconf("SC_CLK_TCK")
for name in os.listdir("/proc"):
    if name.isdigit():
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append((int(name), sum(map(int, fields[11:15]))))
def total(pid, ticks):
    return ticks + sum(total(child, t) for child, t in tree.get(pid, ()))
own = next((t for kids in tree.values() for p, t in kids if p == root), 0)
print(f"{total(root, own) / hz:.2f}")
EOF
}

# tls_check NEWDIR TEXT: every delivered message carries TEXT (its Received: line says it
# came over TLS); sets TLS_LINE on failure.  Also sets TLS_CLIENT, the client's result line.
tls_check() {
    local n
    TLS_CLIENT=$(tail -n 1 "$R_LOG" 2>/dev/null || true)
    n=$(find "$1" -maxdepth 1 -type f -print0 | xargs -0 -r grep -L -F -e "$2" | wc -l || true)
    if (( n )); then
        TLS_LINE="$n of $MESSAGES delivered messages lack '$2' (not received over TLS?)"
        return 1
    fi
}

# ---------------------------------------------------------------- smtp-sink (relay next hop)
# start_sink NAME -> SINK_PID, WATCH_PID, SINK_EVENTS; or returns 1 with SINK_LINE set.
# smtp-sink -c writes its counters into a FIFO that sink_watch.py timestamps.
start_sink() {
    local name=$1 fifo="$WORK/$1-sink.fifo"
    SINK_EVENTS="$WORK/$name-sink.events"; SINK_LINE=""
    port_listening "$SINK_PORT" && { SINK_LINE="sink port $SINK_PORT is already in use"; return 1; }
    rm -f "$fifo"; mkfifo "$fifo"
    "$PY" "$HERE/sink_watch.py" --out "$SINK_EVENTS" <"$fifo" &
    WATCH_PID=$!
    BG_PIDS+=("$WATCH_PID")
    # -u: smtp-sink refuses to run as root; -m: room for both servers' connections.
    smtp-sink -4 -c -u postfix -h sink.bench.test -m 1000 "$HOST:$SINK_PORT" 1000 \
        >"$fifo" 2>"$WORK/$name-sink.err" &
    SINK_PID=$!
    BG_PIDS+=("$SINK_PID")
    if ! wait_port "$SINK_PORT" "$SINK_PID"; then
        SINK_LINE="smtp-sink is not listening on $HOST:$SINK_PORT: $(tailf "$WORK/$name-sink.err")"
        stop_sink
        return 1
    fi
    local i
    for ((i = 0; i < 50; i++)); do [[ -s $SINK_EVENTS ]] && break; sleep 0.1; done
    [[ -s $SINK_EVENTS ]] || { SINK_LINE="sink_watch.py did not start"; stop_sink; return 1; }
    log "$name: smtp-sink up on $HOST:$SINK_PORT (pid $SINK_PID)"
}

# ---------------------------------------------------------------- postfix
PF_OK=0; PF_LINE=""; PFR_OK=0; PFR_LINE=""; PFT_OK=0; PFT_LINE=""
# run_postfix MODE: MODE maildir (virtual delivery to a maildir; results in PF_*),
# relay (relay to smtp-sink; results in PFR_*) or tls (maildir delivery with STARTTLS
# offered, tls_load.py as the client; results in PFT_*).  P_LINE: the failure.
run_postfix() {
    local mode=$1 pfx=PF base="$WORK/postfix"
    [[ $mode == relay ]] && { pfx=PFR; base="$WORK/postfix-relay"; }
    [[ $mode == tls ]] && { pfx=PFT; base="$WORK/postfix-tls"; }
    if postfix_run "$mode" "$pfx" "$base"; then
        printf -v "${pfx}_OK" 1
    else
        printf -v "${pfx}_LINE" '%s' "$P_LINE"
        return 1
    fi
}

postfix_run() {  # MODE PREFIX BASE-DIR
    local mode=$1 pfx=$2 base=$3 name=postfix
    [[ $mode == maildir ]] || name=postfix-$mode
    P_LINE=""
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
# no syslog daemon is assumed: log to a file through postlogd
maillog_file = $maillog
maillog_file_prefixes = $base
EOF
    if [[ $mode != relay ]]; then
        cat >>"$PF_ETC/main.cf" <<EOF
virtual_mailbox_domains = example.test
virtual_mailbox_base = $vmail
virtual_mailbox_maps = static:example.test/bench/
virtual_minimum_uid = $uid
virtual_uid_maps = static:$uid
virtual_gid_maps = static:$gid
EOF
    else
        # Relay: example.test goes to smtp-sink, an IP literal (no DNS, no MX);
        # nothing is delivered locally and nothing else leaves (error transport).
        cat >>"$PF_ETC/main.cf" <<EOF
relay_domains = example.test
relay_transport = relay:[$HOST]:$SINK_PORT
default_transport = error:not routed in this benchmark
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtp_tls_security_level = none
# the default (default_destination_concurrency_limit), as Sluice's destination_concurrency
relay_destination_concurrency_limit = 20
EOF
    fi
    local tlsmgr=""
    if [[ $mode == tls ]]; then
        # STARTTLS offered, the same certificate as Sluice's; the TLS details go into
        # Received: so that the run can check that every message came over TLS.
        cat >>"$PF_ETC/main.cf" <<EOF
smtpd_tls_cert_file = $TLS_DIR/cert.pem
smtpd_tls_key_file = $TLS_DIR/key.pem
smtpd_tls_security_level = may
smtpd_tls_received_header = yes
EOF
        tlsmgr="tlsmgr    unix  -       -       n       1000?   1       tlsmgr"
    fi

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
$tlsmgr
EOF

    port_listening "$PF_PORT" && { P_LINE="port $PF_PORT is already in use"; return 1; }
    if ! postfix -c "$PF_ETC" check >"$base/check.log" 2>&1; then
        P_LINE="postfix check failed: $(tailf "$base/check.log")"; return 1
    fi
    if [[ -s $base/check.log ]]; then
        log "$name: postfix check says: $(tailf "$base/check.log")"
    fi
    local kind=maildir target="$vmail/example.test/bench/new"
    if [[ $mode == relay ]]; then
        start_sink "$name" || { P_LINE="$SINK_LINE"; return 1; }
        kind=sink; target=$SINK_EVENTS
    fi
    PF_STARTED=1
    if ! timeout 60 postfix -c "$PF_ETC" start >"$base/start.log" 2>&1; then
        P_LINE="postfix start failed: $(tailf "$base/start.log")"; stop_sink; return 1
    fi
    if ! wait_port "$PF_PORT"; then
        P_LINE="postfix is not listening on $HOST:$PF_PORT after 30 s: $(tailf "$maillog")"
        stop_sink
        return 1
    fi
    log "$name: private instance up (config $PF_ETC)"

    local MESSAGES=$MESSAGES LOAD=("${LOAD[@]}") LOAD_NAME=$LOAD_NAME mpid cpu0=0
    mpid=$(tr -d ' \n' < "$PF_Q/pid/master.pid" 2>/dev/null || true)
    if [[ $mode == tls ]]; then tls_load; cpu0=$(tree_cpu "$mpid"); fi
    if ! measure "$name" "$PF_PORT" "$kind" "$target" --pidfile "$PF_Q/pid/master.pid"; then
        P_LINE="$R_ERR"
        [[ -f $maillog ]] && log "$name maillog tail:" && tail -n 5 "$maillog" >&2
        stop_private_postfix
        stop_sink
        return 1
    fi
    if [[ $mode == tls ]]; then
        # shellcheck disable=SC2034  # PFT_SERVER_CPU and PFT_CLIENT are read by tls_details
        PFT_SERVER_CPU=$(fcalc %.2f "$(tree_cpu "$mpid") - $cpu0")
        if ! tls_check "$target" '(using TLS'; then
            P_LINE=$TLS_LINE
            stop_private_postfix
            return 1
        fi
        # shellcheck disable=SC2034
        PFT_CLIENT=$TLS_CLIENT
    fi
    save_result "$pfx"
    stop_private_postfix
    if [[ $mode == relay ]]; then
        stop_sink
        PFR_SINK=$(sink_count "$SINK_EVENTS")
        PFR_DEFERRED=$(grep -c 'status=deferred' "$maillog" 2>/dev/null || true)
    fi
}

# ---------------------------------------------------------------- sluice
write_sluice_conf() {  # DIR PORT EXTRA-SERVER-LINES [ROUTE-TO [TRAILER]]
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
to = "${4:-maildir:mail}"

[[stage]]
use = "access"
deny_clients = ["192.0.2.0/24"]

[[stage]]
use = "size-limit"
max_bytes = 10485760
${5:-}
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
    if ! measure sluice "$SL_PORT" maildir "$newdir" --pid "$SL_PID"; then
        SL_LINE="$R_ERR"
        if [[ ! -d $newdir && -d $dir/mail ]]; then
            SL_LINE+="; maildirs found: $(find "$dir/mail" -type d -name new | tr '\n' ' ')"
        fi
        pid_alive "$SL_PID" || SL_LINE+="; sluice died: $(tailf "$dir/sluice.log")"
        stop_sluice
        return 1
    fi
    save_result SL
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

# ---------------------------------------------------------------- sluice relay
# Both relay runs use the same pipeline.conf: the example.test route goes to smtp-sink on
# SINK_PORT.  The end-to-end run starts the sink; the acceptance-alone run leaves the port
# closed, so every delivery attempt is refused at once and deferred for an hour (no retry
# falls inside the run).
write_sluice_relay_conf() {  # DIR
    write_sluice_conf "$1" "$SL_PORT" "" "smtp://$HOST:$SINK_PORT" \
        $'[queue]\nmin_backoff_s = 3600\nmax_backoff_s = 3600'
}

SLR_OK=0; SLR_LINE=""
run_sluice_relay() {
    local dir="$WORK/sluice-relay"
    fresh_fs "$dir"
    write_sluice_relay_conf "$dir"
    start_sink sluice-relay || { SLR_LINE="$SINK_LINE"; return 1; }
    start_sluice "$dir" || { SLR_LINE="$SL_LINE"; stop_sink; return 1; }
    log "sluice-relay: up (pid $SL_PID, config $dir/pipeline.conf)"
    local ok=1
    measure sluice-relay "$SL_PORT" sink "$SINK_EVENTS" --pid "$SL_PID" || ok=0
    SLR_DEFERRED=$(grep -c 'status=deferred' "$dir/sluice.log" 2>/dev/null || true)
    local alive=1
    pid_alive "$SL_PID" || alive=0
    stop_sluice
    SLR_TERM=$SL_STOP_STATUS
    stop_sink
    SLR_SINK=$(sink_count "$SINK_EVENTS")
    if (( ! ok )); then
        SLR_LINE="$R_ERR"
        (( SLR_DEFERRED )) && SLR_LINE+="; $SLR_DEFERRED deliveries deferred (retry in 1 h): $(grep 'status=deferred' "$dir/sluice.log" | tail -n 1)"
        (( alive )) || SLR_LINE+="; sluice died: $(tailf "$dir/sluice.log")"
        return 1
    fi
    save_result SLR
    (( alive )) || { SLR_LINE="sluice died during the run: $(tailf "$dir/sluice.log")"; return 1; }
    SLR_OK=1
}

SLA_OK=0; SLA_LINE=""
run_sluice_accept() {
    local dir="$WORK/sluice-accept"
    fresh_fs "$dir"
    write_sluice_relay_conf "$dir"
    if port_listening "$SINK_PORT"; then
        SLA_LINE="something listens on the next-hop port $SINK_PORT; it must be down for this run"
        return 1
    fi
    start_sluice "$dir" || { SLA_LINE="$SL_LINE"; return 1; }
    log "sluice-accept: up (pid $SL_PID), next hop $HOST:$SINK_PORT down"
    local ok=1
    measure sluice-accept "$SL_PORT" accept "$dir/spool/queue" --pid "$SL_PID" || ok=0
    SLA_DEFERRED=$(grep -c 'status=deferred' "$dir/sluice.log" 2>/dev/null || true)
    local alive=1
    pid_alive "$SL_PID" || alive=0
    stop_sluice
    SLA_TERM=$SL_STOP_STATUS
    if (( ! ok )); then
        SLA_LINE="$R_ERR"
        (( alive )) || SLA_LINE+="; sluice died: $(tailf "$dir/sluice.log")"
        return 1
    fi
    save_result SLA
    (( alive )) || { SLA_LINE="sluice died during the run: $(tailf "$dir/sluice.log")"; return 1; }
    SLA_OK=1
}

# ---------------------------------------------------------------- sluice with spf
# The maildir run again with the spf stage in front, asking a local DNS server (dnslib's
# zone resolver) through the gateway's libunbound cache: 3 queries per check, all cached
# after the first message.
SLS_OK=0; SLS_LINE=""
run_sluice_spf() {
    local dir="$WORK/sluice-spf"
    fresh_fs "$dir"
    cat >"$dir/zone.txt" <<EOF
client.test. 300 IN TXT "v=spf1 a:mail.client.test include:_spf.client.test -all"
mail.client.test. 300 IN A 198.51.100.1
_spf.client.test. 300 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
EOF
    port_listening "$DNS_PORT" && { SLS_LINE="port $DNS_PORT (DNS) is already in use"; return 1; }
    "$PY" -m dnslib.zoneresolver --zone "$dir/zone.txt" --address "$HOST" --port "$DNS_PORT" --tcp \
        >"$dir/dns.log" 2>&1 &
    DNS_PID=$!
    BG_PIDS+=("$DNS_PID")
    wait_port "$DNS_PORT" "$DNS_PID" || { SLS_LINE="the DNS server did not start: $(tailf "$dir/dns.log")"; return 1; }
    write_sluice_conf "$dir" "$SL_PORT" $'\n[dns]\nservers = ["'"$HOST:$DNS_PORT"'"]' "" \
        $'\n[[stage]]\nuse = "spf"\nfail = "reject"'
    start_sluice "$dir" || { SLS_LINE="$SL_LINE"; kill "$DNS_PID" 2>/dev/null; return 1; }
    log "sluice-spf: up (pid $SL_PID, config $dir/pipeline.conf, DNS on $HOST:$DNS_PORT)"
    local ok=1 newdir="$dir/mail/example.test/bench/new"
    measure sluice-spf "$SL_PORT" maildir "$newdir" --pid "$SL_PID" || ok=0
    local alive=1
    pid_alive "$SL_PID" || alive=0
    stop_sluice
    SLS_TERM=$SL_STOP_STATUS
    kill "$DNS_PID" 2>/dev/null || true
    wait "$DNS_PID" 2>/dev/null || true
    if (( ! ok )); then
        SLS_LINE="$R_ERR"
        (( alive )) || SLS_LINE+="; sluice died: $(tailf "$dir/sluice.log")"
        return 1
    fi
    local f
    f=$(find "$newdir" -maxdepth 1 -type f -print -quit)
    if ! grep -q '^Received-SPF: pass' "$f"; then
        SLS_LINE="delivered message $f has no 'Received-SPF: pass'"
        return 1
    fi
    save_result SLS
    (( alive )) || { SLS_LINE="sluice died during the run: $(tailf "$dir/sluice.log")"; return 1; }
    SLS_OK=1
}

# ---------------------------------------------------------------- sluice with tls
# The maildir run with [tls] (STARTTLS on the smtp listener) and tls_load.py as the client.
SLT_OK=0; SLT_LINE=""
run_sluice_tls() {
    local dir="$WORK/sluice-tls"
    fresh_fs "$dir"
    write_sluice_conf "$dir" "$SL_PORT" \
        $'\n[tls]\ncertificate = "'"$TLS_DIR/cert.pem"$'"\nkey = "'"$TLS_DIR/key.pem"$'"\n'
    start_sluice "$dir" || { SLT_LINE="$SL_LINE"; return 1; }
    log "sluice-tls: up (pid $SL_PID, config $dir/pipeline.conf)"
    local ok=1 newdir="$dir/mail/example.test/bench/new" cpu0
    local MESSAGES=$MESSAGES LOAD=("${LOAD[@]}") LOAD_NAME=$LOAD_NAME
    tls_load
    cpu0=$(tree_cpu "$SL_PID")
    measure sluice-tls "$SL_PORT" maildir "$newdir" --pid "$SL_PID" || ok=0
    # shellcheck disable=SC2034  # SLT_SERVER_CPU and SLT_CLIENT are read by tls_details
    SLT_SERVER_CPU=$(fcalc %.2f "$(tree_cpu "$SL_PID") - $cpu0")
    local alive=1
    pid_alive "$SL_PID" || alive=0
    stop_sluice
    SLT_TERM=$SL_STOP_STATUS
    if (( ! ok )); then
        SLT_LINE="$R_ERR"
        (( alive )) || SLT_LINE+="; sluice died: $(tailf "$dir/sluice.log")"
        return 1
    fi
    (( alive )) || { SLT_LINE="sluice died during the run: $(tailf "$dir/sluice.log")"; return 1; }
    tls_check "$newdir" 'with ESMTPS' || { SLT_LINE=$TLS_LINE; return 1; }
    # shellcheck disable=SC2034
    SLT_CLIENT=$TLS_CLIENT
    save_result SLT
    SLT_OK=1
}

# ---------------------------------------------------------------- run
if (( RUN_MAILDIR )); then
    if (( RUN_POSTFIX )); then
        run_postfix maildir || { FAILED=1; log "postfix: FAILED: $PF_LINE"; }
    fi
    if (( RUN_SLUICE )); then
        run_sluice || { FAILED=1; log "sluice: FAILED: $SL_LINE"; }
        run_idle || { FAILED=1; log "idle: FAILED: $IDLE_LINE"; }
        if (( RUN_SPF )); then
            run_sluice_spf || { FAILED=1; log "sluice-spf: FAILED: $SLS_LINE"; }
        fi
    fi
fi
if (( RUN_RELAY )); then
    if (( RUN_POSTFIX )); then
        run_postfix relay || { FAILED=1; log "postfix-relay: FAILED: $PFR_LINE"; }
    fi
    if (( RUN_SLUICE )); then
        run_sluice_relay || { FAILED=1; log "sluice-relay: FAILED: $SLR_LINE"; }
        run_sluice_accept || { FAILED=1; log "sluice-accept: FAILED: $SLA_LINE"; }
    fi
fi
if (( RUN_TLS )); then
    if ! make_tls_cert; then
        FAILED=1
        PFT_LINE="openssl could not make the certificate: $(tailf "$WORK/tls/openssl.log")"
        SLT_LINE=$PFT_LINE
        log "tls: FAILED: $PFT_LINE"
    else
        if (( RUN_POSTFIX )); then
            run_postfix tls || { FAILED=1; log "postfix-tls: FAILED: $PFT_LINE"; }
        fi
        if (( RUN_SLUICE )); then
            run_sluice_tls || { FAILED=1; log "sluice-tls: FAILED: $SLT_LINE"; }
        fi
    fi
fi

# ---------------------------------------------------------------- summary
mb() { fcalc %.1f "$1 / 1024"; }
echo
echo "== details =="
if (( RUN_MAILDIR || RUN_RELAY )); then
    echo "load: smtp-source ${SRC_FLAGS[*]} (messages=$MESSAGES sessions=$SESSIONS size=$SIZE reuse=$REUSE)"
fi
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
if (( RUN_RELAY )); then
    echo "relay:   next hop smtp-sink on $HOST:$SINK_PORT; end = the sink has counted all $MESSAGES messages"
fi
if (( PFR_OK )); then
    echo "relay postfix: client done after $PFR_SRC s, sink complete at $PFR_ELAPSED s; sink counted $PFR_SINK; $PFR_DEFERRED deferrals logged; up to $PFR_PROCS processes"
fi
if (( SLR_OK )); then
    echo "relay sluice:  client done after $SLR_SRC s, sink complete at $SLR_ELAPSED s; sink counted $SLR_SINK; $SLR_DEFERRED deferrals logged; $SLR_TERM"
fi
if (( SLA_OK )); then
    echo "accept alone:  client done after $SLA_SRC s; $SLA_DEFERRED delivery attempts refused and deferred; peak RSS $(mb "$SLA_RSS_KB") MB; $SLA_TERM"
fi
if (( RUN_TLS )); then
    echo "tls:     tls_load.py, a new connection per message (EHLO, STARTTLS, a full handshake, EHLO, one message, QUIT), $SESSIONS sessions in $TLS_PROCS process(es), $TLS_MESSAGES msgs, $TLS_KEY certificate"
fi
# tls_details LABEL PREFIX [TRAILER]: the negotiated TLS and where the CPU went.
tls_details() {
    local client=${2}_CLIENT src=${2}_SRC el=${2}_ELAPSED srv=${2}_SERVER_CPU all=${2}_CPU
    local tls cpu
    tls=$(sed -n 's/.* tls=\([^ ]*\).*/\1/p' <<<"${!client}")
    cpu=$(sed -n 's/.* cpu=\([0-9.]*\).*/\1/p' <<<"${!client}")
    printf '%s client done after %s s, last delivery at %s s; %s; CPU seconds: server %s, client %s, whole machine %s of %s%s\n' \
        "$1" "${!src}" "${!el}" "${tls:-?}" "${!srv}" "${cpu:-?}" "${!all}" "$(fcalc %.1f "$(nproc) * ${!el}")" "${3:-}"
}
(( PFT_OK )) && tls_details "tls postfix:" PFT
(( SLT_OK )) && tls_details "tls sluice: " SLT "; $SLT_TERM"
echo
echo "== summary =="
if (( RUN_MAILDIR && RUN_POSTFIX )); then
    if (( PF_OK )); then
        printf 'postfix: %d msgs in %.2f s = %.0f msgs/s, peak RSS %s MB (PSS %s MB)\n' \
            "$MESSAGES" "$PF_ELAPSED" "$PF_RATE" "$(mb "$PF_RSS_KB")" "$(mb "$PF_PSS_KB")"
    else
        echo "postfix: FAILED: $PF_LINE"
    fi
fi
if (( RUN_MAILDIR && RUN_SLUICE )); then
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
if (( RUN_MAILDIR && RUN_SLUICE )); then
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
if (( RUN_SPF && RUN_SLUICE )); then
    if (( SLS_OK )); then
        printf 'sluice with spf: %d msgs in %.2f s = %.0f msgs/s, peak RSS %s MB\n' \
            "$MESSAGES" "$SLS_ELAPSED" "$SLS_RATE" "$(mb "$SLS_RSS_KB")"
        if (( SL_OK )); then
            pct=$(fcalc %.0f "100 * $SLS_RATE / $SL_RATE")
            verdict=""
            if (( pct < SPF_TARGET )); then verdict=" -- BELOW TARGET"; SPF_BAD=1; fi
            printf 'spf stage cost: with spf = %d%% of the rate without (target >= %d%%)%s\n' "$pct" "$SPF_TARGET" "$verdict"
        fi
    else
        echo "sluice with spf: FAILED: $SLS_LINE"
    fi
fi
if (( RUN_RELAY && RUN_POSTFIX )); then
    if (( PFR_OK )); then
        printf 'relay postfix: %d msgs relayed in %.2f s = %.0f msgs/s (accepted at %.0f msgs/s), peak RSS %s MB (PSS %s MB)\n' \
            "$MESSAGES" "$PFR_ELAPSED" "$PFR_RATE" "$PFR_ACC_RATE" "$(mb "$PFR_RSS_KB")" "$(mb "$PFR_PSS_KB")"
    else
        echo "relay postfix: FAILED: $PFR_LINE"
    fi
fi
if (( RUN_RELAY && RUN_SLUICE )); then
    if (( SLR_OK )); then
        printf 'relay sluice:  %d msgs relayed in %.2f s = %.0f msgs/s (accepted at %.0f msgs/s), peak RSS %s MB (PSS %s MB)\n' \
            "$MESSAGES" "$SLR_ELAPSED" "$SLR_RATE" "$SLR_ACC_RATE" "$(mb "$SLR_RSS_KB")" "$(mb "$SLR_PSS_KB")"
    else
        echo "relay sluice:  FAILED: $SLR_LINE"
    fi
fi
if (( PFR_OK && SLR_OK )); then
    echo "relay ratio sluice/postfix: $(fcalc %.2f "$SLR_RATE / $PFR_RATE")"
fi
if (( RUN_RELAY && RUN_SLUICE )); then
    if (( SLA_OK )); then
        printf 'acceptance alone (next hop down): %.0f msgs/s\n' "$SLA_ACC_RATE"
    else
        echo "acceptance alone: FAILED: $SLA_LINE"
    fi
    if (( SLR_OK && SLA_OK )); then
        pct=$(fcalc %.0f "100 * $SLR_ACC_RATE / $SLA_ACC_RATE")
        verdict=""
        if (( pct < ACCEPT_TARGET )); then verdict=" -- BELOW TARGET"; ACCEPT_BAD=1; fi
        printf 'acceptance with delivery on: %.0f msgs/s = %d%% of acceptance alone (target >= %d%%)%s\n' \
            "$SLR_ACC_RATE" "$pct" "$ACCEPT_TARGET" "$verdict"
    fi
fi
if (( RUN_TLS && RUN_POSTFIX )); then
    if (( PFT_OK )); then
        printf 'tls postfix: %d msgs in %.2f s = %.0f msgs/s, peak RSS %s MB (PSS %s MB)\n' \
            "$TLS_MESSAGES" "$PFT_ELAPSED" "$PFT_RATE" "$(mb "$PFT_RSS_KB")" "$(mb "$PFT_PSS_KB")"
    else
        echo "tls postfix: FAILED: $PFT_LINE"
    fi
fi
if (( RUN_TLS && RUN_SLUICE )); then
    if (( SLT_OK )); then
        printf 'tls sluice:  %d msgs in %.2f s = %.0f msgs/s, peak RSS %s MB (PSS %s MB)\n' \
            "$TLS_MESSAGES" "$SLT_ELAPSED" "$SLT_RATE" "$(mb "$SLT_RSS_KB")" "$(mb "$SLT_PSS_KB")"
    else
        echo "tls sluice:  FAILED: $SLT_LINE"
    fi
fi
if (( PFT_OK && SLT_OK )); then
    echo "tls ratio sluice/postfix: $(fcalc %.2f "$SLT_RATE / $PFT_RATE")"
fi

(( FAILED )) && exit 1
(( IDLE_BAD )) && exit 3
(( ACCEPT_BAD )) && exit 4
(( SPF_BAD )) && exit 5
exit 0
