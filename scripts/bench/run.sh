#!/usr/bin/env bash
# Sluice benchmark harness: Postfix baseline vs Sluice (maildir delivery, then
# relay to an smtp-sink next hop), an idle-connection memory check,
# Sluice's acceptance rate with delivery on vs alone, the maildir run over STARTTLS
# with one connection per message (tls_load.py), the cost of spf + dkim-verify + dmarc
# on DKIM-signed mail, a spamd scan (Sluice's spam stage vs Postfix + spamass-milter) and
# an opendkim signing milter on both servers.  See scripts/bench/README.md.
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
#                         auth = a DKIM-signed message with and without spf + dkim-verify
#                         + dmarc (Sluice only),
#                         tls = maildir delivery over STARTTLS, a connection per message,
#                         spam = spamd: Sluice's spam stage vs Postfix + spamass-milter,
#                         milter = an opendkim signing milter on both servers);
#                         an omitted kind means all of that kind  (all)
#   BENCH_ACCEPT_TARGET   % of the acceptance rate alone that acceptance with delivery
#                         on must reach                          (80)
#   BENCH_SPF_TARGET      % of the maildir rate that the same run with the spf stage
#                         (warm cache, local DNS) must reach     (80)
#   BENCH_DNS_PORT        (2629)   the local DNS server (dnslib) for the spf and auth runs
#   BENCH_AUTH_TARGET     % of the rate without them that the auth run (spf + dkim-verify +
#                         dmarc, warm DNS) must reach            (70)
#   BENCH_SPAM_MESSAGES   messages in each spam run              (500)
#   BENCH_SPAM_TIMEOUT    BENCH_TIMEOUT of the spam runs (spamd scans a few messages a
#                         second on a busy 2-core machine)       (900)
#   BENCH_SPAM_TARGET     % of Postfix + spamass-milter's rate that Sluice's spam stage
#                         must reach                             (90)
#   BENCH_SPAMD_PORT      (2630)   spamd, both spam runs      loopback only
#   BENCH_SPAMD_CHILDREN  spamd's children (--min/--max-children)   (4)
#   BENCH_SPAMASS_PORT    (2631)   spamass-milter (Postfix's spam run)
#   BENCH_MILTER_TARGET   % of Postfix's rate with the opendkim milter that Sluice's must
#                         reach                                  (100)
#   BENCH_OPENDKIM_PORT   (2632)   opendkim, both milter runs
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
# BENCH_ACCEPT_TARGET % of acceptance alone, 5 the spf run was below BENCH_SPF_TARGET %,
# 6 the auth run was below BENCH_AUTH_TARGET %, 7 the spam run was below BENCH_SPAM_TARGET %
# of Postfix's, 8 the milter run was below BENCH_MILTER_TARGET % of Postfix's.
# shellcheck disable=SC2153  # PF_*, SL_*, PFR_*, SLR_*, SLA_*, PFT_*, SLT_*, SLAB_*, SLAU_*, PFSP_*, SLSP_*, PFM_*, SLM_* results are set by save_result
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
AUTH_TARGET=${BENCH_AUTH_TARGET:-70}
SPAM_MESSAGES=${BENCH_SPAM_MESSAGES:-500}
SPAM_TIMEOUT=${BENCH_SPAM_TIMEOUT:-900}
SPAM_TARGET=${BENCH_SPAM_TARGET:-90}
SPAMD_PORT=${BENCH_SPAMD_PORT:-2630}
SPAMD_CHILDREN=${BENCH_SPAMD_CHILDREN:-4}
SPAMASS_PORT=${BENCH_SPAMASS_PORT:-2631}
MILTER_TARGET=${BENCH_MILTER_TARGET:-100}
OPENDKIM_PORT=${BENCH_OPENDKIM_PORT:-2632}
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
         TLS_MESSAGES:BENCH_TLS_MESSAGES TLS_PROCS:BENCH_TLS_PROCS \
         AUTH_TARGET:BENCH_AUTH_TARGET SPAM_MESSAGES:BENCH_SPAM_MESSAGES SPAM_TARGET:BENCH_SPAM_TARGET \
         SPAM_TIMEOUT:BENCH_SPAM_TIMEOUT \
         SPAMD_PORT:BENCH_SPAMD_PORT SPAMD_CHILDREN:BENCH_SPAMD_CHILDREN SPAMASS_PORT:BENCH_SPAMASS_PORT \
         MILTER_TARGET:BENCH_MILTER_TARGET OPENDKIM_PORT:BENCH_OPENDKIM_PORT; do
    val=${v%%:*}
    [[ ${!val} =~ ^[0-9]+$ ]] && (( ${!val} > 0 )) || die "${v#*:} must be a positive integer (got '${!val}')"
done
(( TIMEOUT >= 30 )) || die "BENCH_TIMEOUT must be at least 30"
(( SPAM_TIMEOUT >= 30 )) || die "BENCH_SPAM_TIMEOUT must be at least 30"
[[ $REUSE == 0 || $REUSE == 1 ]] || die "BENCH_REUSE must be 0 or 1"
[[ $TLS_KEY == ecdsa || $TLS_KEY == rsa ]] || die "BENCH_TLS_KEY must be ecdsa or rsa"
(( PF_PORT != SL_PORT && PF_PORT != SINK_PORT && SL_PORT != SINK_PORT )) \
    || die "BENCH_POSTFIX_PORT, BENCH_SLUICE_PORT and BENCH_SINK_PORT must differ"
[[ $(printf '%s\n' "$PF_PORT" "$SL_PORT" "$SINK_PORT" "$DNS_PORT" "$SPAMD_PORT" "$SPAMASS_PORT" \
     "$OPENDKIM_PORT" | sort -u | wc -l) == 7 ]] \
    || die "the BENCH_*_PORT ports (postfix, sluice, sink, dns, spamd, spamass, opendkim) must all differ"
RUN_POSTFIX=0; RUN_SLUICE=0; RUN_MAILDIR=0; RUN_RELAY=0; RUN_SPF=0; RUN_TLS=0
RUN_AUTH=0; RUN_SPAM=0; RUN_MILTER=0
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
        auth) RUN_AUTH=1 ;;
        spam) RUN_SPAM=1 ;;
        milter) RUN_MILTER=1 ;;
        *) die "BENCH_ONLY: unknown word '$w' (all, postfix, sluice, maildir, relay, spf, auth, tls, spam, milter)" ;;
    esac
done
(( RUN_POSTFIX || RUN_SLUICE )) || { RUN_POSTFIX=1; RUN_SLUICE=1; }
(( RUN_MAILDIR || RUN_RELAY || RUN_SPF || RUN_TLS || RUN_AUTH || RUN_SPAM || RUN_MILTER )) \
    || { RUN_MAILDIR=1; RUN_RELAY=1; RUN_SPF=1; RUN_TLS=1; RUN_AUTH=1; RUN_SPAM=1; RUN_MILTER=1; }
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
AUTH_BAD=0
SPAM_BAD=0
MILTER_BAD=0
DNS_PID=""
SPAMD_PID=""; SPAMASS_PID=""; OPENDKIM_PID=""; SPAMD_WARMUP=""
POLICY_RC_D=""   # set while a policy-rc.d of ours keeps package installs from starting services

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

# stop_pid PID [NAME]: SIGTERM, up to 10 s, then SIGKILL; reaps it.  For the helper daemons
# this script starts (the DNS server, spamd, spamass-milter, opendkim).
stop_pid() {
    local p=${1:-} i
    [[ -n $p ]] || return 0
    if pid_alive "$p"; then
        kill -TERM "$p" 2>/dev/null
        for ((i = 0; i < 100; i++)); do pid_alive "$p" || break; sleep 0.1; done
        if pid_alive "$p"; then
            log "${2:-pid $p} did not exit within 10 s of SIGTERM, killing it"
            kill -KILL "$p" 2>/dev/null
        fi
    fi
    wait "$p" 2>/dev/null || true
    return 0
}

# shellcheck disable=SC2317  # invoked by the EXIT trap (cleanup)
stop_helpers() {
    stop_pid "$SPAMASS_PID" spamass-milter; SPAMASS_PID=""
    stop_pid "$OPENDKIM_PID" opendkim; OPENDKIM_PID=""
    stop_pid "$SPAMD_PID" spamd; SPAMD_PID=""
    stop_pid "$DNS_PID" "the DNS server"; DNS_PID=""
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
    stop_helpers
    [[ -n $POLICY_RC_D ]] && rm -f "$POLICY_RC_D"
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
# Is the system instance of a packaged service (its init script's status) running?
sysv_running() { [[ -x /etc/init.d/$1 ]] && "/etc/init.d/$1" status >/dev/null 2>&1; }

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
    if (( RUN_AUTH || RUN_SPAM || RUN_MILTER )); then
        "$PY" -c 'import dkim' 2>/dev/null || pkgs+=(python3-dkim)
    fi
    if (( RUN_AUTH && RUN_SLUICE )); then
        [[ -r /usr/share/publicsuffix/public_suffix_list.dat ]] || pkgs+=(publicsuffix)
    fi
    if (( RUN_SPAM )); then
        [[ -x /usr/sbin/spamd ]] || pkgs+=(spamd)
        command -v spamc >/dev/null || pkgs+=(spamc)
        if (( RUN_POSTFIX )); then command -v spamass-milter >/dev/null || pkgs+=(spamass-milter); fi
    fi
    if (( RUN_MILTER )); then command -v opendkim >/dev/null || pkgs+=(opendkim); fi
    (( ${#pkgs[@]} )) || return 0

    local was_running=0
    system_postfix_running && was_running=1
    # spamd, spamass-milter and opendkim come with a system service each; this script runs
    # private instances only, so none may be started by the install (nor left running).
    local svc svcs=(spamd spamass-milter opendkim) svc_before=()
    for svc in "${svcs[@]}"; do sysv_running "$svc" && svc_before+=("$svc"); done
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        POLICY_RC_D=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\n# scripts/bench/run.sh: no service starts during its package install\nexit 101\n' \
            >"$POLICY_RC_D"
        chmod 755 "$POLICY_RC_D"
    fi
    log "installing: ${pkgs[*]}"
    if [[ " ${pkgs[*]} " == *" postfix "* ]] && ! dpkg -s postfix >/dev/null 2>&1; then
        # We only need the binaries; keep the system instance unconfigured.
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    fi
    apt-get update >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >&2 \
        || die "apt-get install ${pkgs[*]} failed"
    if [[ -n $POLICY_RC_D ]]; then rm -f "$POLICY_RC_D"; POLICY_RC_D=""; fi
    if (( ! was_running )) && system_postfix_running; then
        log "stopping the system postfix that the package install started"
        SYSTEM_PF_STARTED_BY_US=1
        postfix stop >/dev/null 2>&1 || true
    fi
    for svc in "${svcs[@]}"; do
        [[ " ${svc_before[*]} " == *" $svc "* ]] && continue
        if sysv_running "$svc"; then
            log "stopping the system $svc that the package install started"
            "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
        fi
    done
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

# ---------------------------------------------------------------- prepared messages
# The auth, spam and milter runs send one prepared message (smtp-source -F) instead of
# smtp-source's generated one: From: bench@client.test, plain text, a body of about
# BENCH_SIZE bytes; msg/plain.txt as it is, msg/signed.txt with a dkimpy DKIM-Signature
# (rsa-sha256, relaxed/relaxed, d=client.test, s=bench, the 2048-bit key msg/key.pem, whose
# record the auth run's DNS zone publishes; opendkim signs with the same key in the milter
# runs).  Every message of a run is the same bytes.
MSG_DIR=""; MSG_PLAIN=""; MSG_SIGNED=""; MSG_LINE=""; DKIM_KEY=""; DKIM_ZONE_TXT=""
DKIM_DOMAIN=client.test; DKIM_SELECTOR=bench
make_messages() {
    local dir="$WORK/msg"
    mkdir -p "$dir"
    openssl genrsa -traditional -out "$dir/key.pem" 2048 >"$dir/openssl.log" 2>&1 \
        || { MSG_LINE="openssl genrsa failed: $(tailf "$dir/openssl.log")"; return 1; }
    if ! "$PY" "$HERE/bench_message.py" make --size "$SIZE" --key "$dir/key.pem" \
            --domain "$DKIM_DOMAIN" --selector "$DKIM_SELECTOR" \
            --plain "$dir/plain.txt" --signed "$dir/signed.txt" >"$dir/make.log" 2>&1; then
        MSG_LINE="bench_message.py make failed: $(tailf "$dir/make.log")"; return 1
    fi
    DKIM_ZONE_TXT=$("$PY" "$HERE/bench_message.py" record --key "$dir/key.pem" 2>>"$dir/make.log") \
        || { MSG_LINE="bench_message.py record failed: $(tailf "$dir/make.log")"; return 1; }
    MSG_DIR=$dir; MSG_PLAIN="$dir/plain.txt"; MSG_SIGNED="$dir/signed.txt"; DKIM_KEY="$dir/key.pem"
}

# file_load FILE COUNT: for a run that has made MESSAGES, LOAD and LOAD_NAME local, measure
# then sends FILE COUNT times (smtp-source -F; the other flags as in the maildir run).
file_load() {
    MESSAGES=$2
    LOAD=(smtp-source -4 -s "$SESSIONS" -m "$2" -F "$1" -M client.test
          -f bench@client.test -t bench@example.test)
    (( REUSE )) && LOAD=(smtp-source -d "${LOAD[@]:1}")
    LOAD_NAME=smtp-source
}

# missing_count DIR TEXT: how many files in DIR lack TEXT (a fixed string).
missing_count() {
    find "$1" -maxdepth 1 -type f -print0 | xargs -0 -r grep -L -F -e "$2" | wc -l || true
}

# header_of FILE NAME: the first NAME: field of FILE's header section, unfolded.
header_of() {
    tr -d '\r' <"$1" | awk -v name="$2" '
        /^$/ { exit }
        found && /^[ \t]/ { sub(/^[ \t]+/, " "); v = v $0; next }
        found { exit }
        tolower(substr($0, 1, length(name) + 1)) == tolower(name) ":" { found = 1; v = $0 }
        END { print v }' || true
}

# ---------------------------------------------------------------- helper daemons
# start_dns: dnslib's zone resolver on BENCH_DNS_PORT with the zone of the spf and auth runs
# (client.test's SPF records, its DMARC record p=none and, once make_messages has run, the
# bench._domainkey.client.test key).  DNS_PID, or returns 1 with HELPER_LINE set.
HELPER_LINE=""
start_dns() {
    local dir="$WORK/dns"
    mkdir -p "$dir"
    cat >"$dir/zone.txt" <<ZONE
client.test. 300 IN TXT "v=spf1 a:mail.client.test include:_spf.client.test -all"
mail.client.test. 300 IN A 198.51.100.1
_spf.client.test. 300 IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
_dmarc.client.test. 300 IN TXT "v=DMARC1; p=none"
ZONE
    if [[ -n $DKIM_ZONE_TXT ]]; then
        echo "$DKIM_SELECTOR._domainkey.$DKIM_DOMAIN. 300 IN TXT $DKIM_ZONE_TXT" >>"$dir/zone.txt"
    fi
    port_listening "$DNS_PORT" && { HELPER_LINE="port $DNS_PORT (DNS) is already in use"; return 1; }
    "$PY" -m dnslib.zoneresolver --zone "$dir/zone.txt" --address "$HOST" --port "$DNS_PORT" --tcp \
        >"$dir/dns.log" 2>&1 &
    DNS_PID=$!
    BG_PIDS+=("$DNS_PID")
    if ! wait_port "$DNS_PORT" "$DNS_PID"; then
        HELPER_LINE="the DNS server did not start: $(tailf "$dir/dns.log")"
        stop_dns
        return 1
    fi
}
stop_dns() { stop_pid "$DNS_PID" "the DNS server"; DNS_PID=""; }

# spamd_ping: does spamd answer PING on BENCH_SPAMD_PORT?
spamd_ping() { spamc -d "$HOST" -p "$SPAMD_PORT" -K >/dev/null 2>&1; }

# start_spamd: SpamAssassin's spamd for both spam runs, offline (-L: local tests only, no
# DNS), no per-user config, no Bayes, a fixed pool of BENCH_SPAMD_CHILDREN children; then
# one scan of the message to warm it up.  SPAMD_PID, or returns 1 with HELPER_LINE set.
start_spamd() {
    local dir="$WORK/spamd" i
    mkdir -p "$dir"; chmod 777 "$dir"   # its home (-H) for the children, which run as nobody
    port_listening "$SPAMD_PORT" && { HELPER_LINE="port $SPAMD_PORT (spamd) is already in use"; return 1; }
    spamd --listen "$HOST:$SPAMD_PORT" -u nobody -L -x -H "$dir" --syslog stderr \
        --min-children "$SPAMD_CHILDREN" --max-children "$SPAMD_CHILDREN" \
        --pidfile "$dir/spamd.pid" --cf 'use_bayes 0' --cf 'bayes_auto_learn 0' \
        </dev/null >"$dir/spamd.log" 2>&1 &
    SPAMD_PID=$!
    BG_PIDS+=("$SPAMD_PID")
    # Loading the rules takes a while (several seconds, more on a busy machine).
    for ((i = 0; i < 1200; i++)); do
        spamd_ping && break
        pid_alive "$SPAMD_PID" || break
        sleep 0.1
    done
    if ! spamd_ping; then
        HELPER_LINE="spamd did not answer PING: $(tailf "$dir/spamd.log")"
        stop_spamd
        return 1
    fi
    SPAMD_WARMUP=$(spamc -d "$HOST" -p "$SPAMD_PORT" -c <"$MSG_PLAIN" 2>&1 || true)
    log "spamd: up on $HOST:$SPAMD_PORT (pid $SPAMD_PID, $SPAMD_CHILDREN children); the message scores $SPAMD_WARMUP"
}
stop_spamd() { stop_pid "$SPAMD_PID" spamd; SPAMD_PID=""; }

# start_spamass_milter: spamass-milter on BENCH_SPAMASS_PORT, asking the bench's spamd
# (spamc -d/-p); -m: headers only, as Sluice's spam stage.  SPAMASS_PID or HELPER_LINE.
start_spamass_milter() {
    local dir="$WORK/spamass"
    mkdir -p "$dir"
    port_listening "$SPAMASS_PORT" && { HELPER_LINE="port $SPAMASS_PORT (spamass-milter) is already in use"; return 1; }
    spamass-milter -p "inet:$SPAMASS_PORT@$HOST" -m -- -d "$HOST" -p "$SPAMD_PORT" \
        </dev/null >"$dir/spamass-milter.log" 2>&1 &
    SPAMASS_PID=$!
    BG_PIDS+=("$SPAMASS_PID")
    if ! wait_port "$SPAMASS_PORT" "$SPAMASS_PID"; then
        HELPER_LINE="spamass-milter did not start: $(tailf "$dir/spamass-milter.log")"
        stop_spamass_milter
        return 1
    fi
    log "spamass-milter: up on $HOST:$SPAMASS_PORT (pid $SPAMASS_PID)"
}
stop_spamass_milter() { stop_pid "$SPAMASS_PID" spamass-milter; SPAMASS_PID=""; }

# start_opendkim: opendkim signing (Mode s) for client.test with the bench key, for mail
# from 127.0.0.1 (InternalHosts), on BENCH_OPENDKIM_PORT.  OPENDKIM_PID or HELPER_LINE.
start_opendkim() {
    local dir="$WORK/opendkim"
    mkdir -p "$dir"
    cat >"$dir/opendkim.conf" <<CONF
Mode s
Domain $DKIM_DOMAIN
Selector $DKIM_SELECTOR
KeyFile $DKIM_KEY
SignatureAlgorithm rsa-sha256
Canonicalization relaxed/relaxed
InternalHosts 127.0.0.1
Socket inet:$OPENDKIM_PORT@$HOST
Syslog no
Background no
# the key is under /tmp, which opendkim otherwise refuses
RequireSafeKeys no
PidFile $dir/opendkim.pid
CONF
    port_listening "$OPENDKIM_PORT" && { HELPER_LINE="port $OPENDKIM_PORT (opendkim) is already in use"; return 1; }
    opendkim -f -x "$dir/opendkim.conf" </dev/null >"$dir/opendkim.log" 2>&1 &
    OPENDKIM_PID=$!
    BG_PIDS+=("$OPENDKIM_PID")
    if ! wait_port "$OPENDKIM_PORT" "$OPENDKIM_PID"; then
        HELPER_LINE="opendkim did not start: $(tailf "$dir/opendkim.log")"
        stop_opendkim
        return 1
    fi
    log "opendkim: up on $HOST:$OPENDKIM_PORT (pid $OPENDKIM_PID)"
}
stop_opendkim() { stop_pid "$OPENDKIM_PID" opendkim; OPENDKIM_PID=""; }

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
PFSP_OK=0; PFSP_LINE=""; PFM_OK=0; PFM_LINE=""
# run_postfix MODE: MODE maildir (virtual delivery to a maildir; results in PF_*),
# relay (relay to smtp-sink; results in PFR_*), tls (maildir delivery with STARTTLS
# offered, tls_load.py as the client; results in PFT_*), spam (maildir delivery through
# spamass-milter and spamd, the plain prepared message; results in PFSP_*) or milter
# (maildir delivery through the opendkim milter; results in PFM_*).  P_LINE: the failure.
run_postfix() {
    local mode=$1 pfx=PF base="$WORK/postfix"
    [[ $mode == relay ]] && { pfx=PFR; base="$WORK/postfix-relay"; }
    [[ $mode == tls ]] && { pfx=PFT; base="$WORK/postfix-tls"; }
    [[ $mode == spam ]] && { pfx=PFSP; base="$WORK/postfix-spam"; }
    [[ $mode == milter ]] && { pfx=PFM; base="$WORK/postfix-milter"; }
    if postfix_run "$mode" "$pfx" "$base"; then
        printf -v "${pfx}_OK" 1
    else
        printf -v "${pfx}_LINE" '%s' "$P_LINE"
        return 1
    fi
}

# The private instance's main.cf or master.cf from scripts/postfix/NAME.in (shared with
# Tests/integration/postfix_instance.py).
postfix_template() {  # NAME OUT HOSTNAME DOMAIN LISTEN SMTPD-MAX QUEUE DATA MAILLOG BASE
    sed -e "s|@WRITER@|scripts/bench/run.sh|" -e "s|@HOSTNAME@|$3|" -e "s|@DOMAIN@|$4|" \
        -e "s|@LISTEN@|$5|" -e "s|@SMTPD_MAX@|$6|" -e "s|@QUEUE@|$7|" -e "s|@DATA@|$8|" \
        -e "s|@MAILLOG@|$9|" -e "s|@BASE@|${10}|" "$HERE/../postfix/$1.in" >"$2"
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

    postfix_template main.cf "$PF_ETC/main.cf" postfix.bench.test bench.test "$HOST:$PF_PORT" "$smtpd_max" \
        "$PF_Q" "$data" "$maillog" "$base"
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
    if [[ $mode == spam || $mode == milter ]]; then
        local mport=$SPAMASS_PORT
        [[ $mode == milter ]] && mport=$OPENDKIM_PORT
        # The milter of the run (spamass-milter or opendkim); one that fails lets the mail
        # through, as the Sluice runs' stages do (every delivered message is checked after).
        cat >>"$PF_ETC/main.cf" <<EOF
smtpd_milters = inet:$HOST:$mport
milter_default_action = accept
EOF
    fi

    postfix_template master.cf "$PF_ETC/master.cf" postfix.bench.test bench.test "$HOST:$PF_PORT" "$smtpd_max" \
        "$PF_Q" "$data" "$maillog" "$base"
    if [[ -n $tlsmgr ]]; then echo "$tlsmgr" >>"$PF_ETC/master.cf"; fi

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
    local TIMEOUT=$TIMEOUT mcpu0=0
    [[ $mode == spam ]] && { file_load "$MSG_PLAIN" "$SPAM_MESSAGES"; TIMEOUT=$SPAM_TIMEOUT; }
    [[ $mode == milter ]] && file_load "$MSG_PLAIN" "$MESSAGES"
    if [[ $mode == spam || $mode == milter ]]; then
        # CPU of Postfix's processes; in the spam run also spamass-milter's and its spamc's
        cpu0=$(tree_cpu "$mpid")
        [[ $mode == spam ]] && mcpu0=$(tree_cpu "$SPAMASS_PID")
    fi
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
    if [[ $mode == spam || $mode == milter ]]; then
        printf -v "${pfx}_SERVER_CPU" '%s' "$(fcalc %.2f "$(tree_cpu "$mpid") - $cpu0")"
        [[ $mode == spam ]] && PFSP_MILTER_CPU=$(fcalc %.2f "$(tree_cpu "$SPAMASS_PID") - $mcpu0")
        if ! milter_check "$mode" "$target"; then
            P_LINE=$CHECK_LINE
            stop_private_postfix
            return 1
        fi
        printf -v "${pfx}_SAMPLE" '%s' "$CHECK_SAMPLE"
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
# zone resolver, start_dns) through the gateway's libunbound cache: 3 queries per check,
# all cached after the first message.
SLS_OK=0; SLS_LINE=""
run_sluice_spf() {
    local dir="$WORK/sluice-spf"
    fresh_fs "$dir"
    start_dns || { SLS_LINE=$HELPER_LINE; return 1; }
    write_sluice_conf "$dir" "$SL_PORT" $'\n[dns]\nservers = ["'"$HOST:$DNS_PORT"'"]' "" \
        $'\n[[stage]]\nuse = "spf"\nfail = "reject"'
    start_sluice "$dir" || { SLS_LINE="$SL_LINE"; stop_dns; return 1; }
    log "sluice-spf: up (pid $SL_PID, config $dir/pipeline.conf, DNS on $HOST:$DNS_PORT)"
    local ok=1 newdir="$dir/mail/example.test/bench/new"
    measure sluice-spf "$SL_PORT" maildir "$newdir" --pid "$SL_PID" || ok=0
    local alive=1
    pid_alive "$SL_PID" || alive=0
    stop_sluice
    SLS_TERM=$SL_STOP_STATUS
    stop_dns
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

# ---------------------------------------------------------------- checks of the milter runs
# milter_check MODE NEWDIR: every delivered message went through the scanner or signer.
# spam: each has X-Spam-Status; milter: each has a DKIM-Signature, and one of them
# verifies (dkimpy, against the bench key).  CHECK_SAMPLE: what one message shows;
# CHECK_LINE: the failure.
milter_check() {
    local mode=$1 dir=$2 n f
    CHECK_LINE=""; CHECK_SAMPLE=""
    f=$(find "$dir" -maxdepth 1 -type f -print -quit)
    if [[ $mode == spam ]]; then
        n=$(missing_count "$dir" "X-Spam-Status:")
        if (( n )); then
            CHECK_LINE="$n of $MESSAGES delivered messages lack X-Spam-Status (not scanned?)"; return 1
        fi
        CHECK_SAMPLE=$(header_of "$f" X-Spam-Status)
    else
        n=$(missing_count "$dir" "DKIM-Signature:")
        if (( n )); then
            CHECK_LINE="$n of $MESSAGES delivered messages lack a DKIM-Signature (not signed by opendkim?)"; return 1
        fi
        if ! "$PY" "$HERE/bench_message.py" verify --key "$DKIM_KEY" --domain "$DKIM_DOMAIN" \
                --selector "$DKIM_SELECTOR" "$f" >/dev/null 2>&1; then
            CHECK_LINE="the DKIM-Signature of $f does not verify (dkimpy)"; return 1
        fi
        CHECK_SAMPLE="DKIM-Signature on every message, dkimpy verifies $(basename "$f"): $(header_of "$f" DKIM-Signature | cut -c 1-90)..."
    fi
}

# ---------------------------------------------------------------- sluice with a prepared message
# sluice_file_run NAME SERVER-LINES STAGES: the maildir run of step 2 in $WORK/NAME (fresh
# file system) with SERVER-LINES after [server]'s keys and STAGES after the usual stages;
# the load is the caller's LOAD (file_load).  Sets SR_NEWDIR, SR_TERM, SR_CPU (Sluice's CPU
# seconds during the run) and, on failure, SR_LINE.
sluice_file_run() {
    local name=$1 dir="$WORK/$1"
    SR_NEWDIR="$dir/mail/example.test/bench/new"; SR_TERM=""; SR_LINE=""
    fresh_fs "$dir"
    write_sluice_conf "$dir" "$SL_PORT" "$2" "" "$3"
    start_sluice "$dir" || { SR_LINE="$SL_LINE"; return 1; }
    log "$name: up (pid $SL_PID, config $dir/pipeline.conf)"
    local ok=1 alive=1 cpu0
    cpu0=$(tree_cpu "$SL_PID")
    measure "$name" "$SL_PORT" maildir "$SR_NEWDIR" --pid "$SL_PID" || ok=0
    SR_CPU=$(fcalc %.2f "$(tree_cpu "$SL_PID") - $cpu0")
    pid_alive "$SL_PID" || alive=0
    stop_sluice
    SR_TERM=$SL_STOP_STATUS
    if (( ! ok )); then
        SR_LINE="$R_ERR"
        (( alive )) || SR_LINE+="; sluice died: $(tailf "$dir/sluice.log")"
        return 1
    fi
    (( alive )) || { SR_LINE="sluice died during the run: $(tailf "$dir/sluice.log")"; return 1; }
}

# ---------------------------------------------------------------- sluice auth (spf + dkim-verify + dmarc)
# The DKIM-signed message twice: without the authentication stages (SLAB_*), then with spf
# (fail = "tag"), dkim-verify and dmarc asking the local DNS server (SLAU_*): the key, the
# DMARC record and the SPF records are all cached after the first message (warm DNS).
SLAB_OK=0; SLAB_LINE=""; SLAU_OK=0; SLAU_LINE=""
run_sluice_auth_base() {
    local MESSAGES=$MESSAGES LOAD=("${LOAD[@]}") LOAD_NAME=$LOAD_NAME
    file_load "$MSG_SIGNED" "$MESSAGES"
    sluice_file_run sluice-auth-base "" "" || { SLAB_LINE=$SR_LINE; return 1; }
    save_result SLAB
    SLAB_TERM=$SR_TERM
    # shellcheck disable=SC2034  # read by ms_per
    SLAB_SERVER_CPU=$SR_CPU
    SLAB_OK=1
}

run_sluice_auth() {
    local MESSAGES=$MESSAGES LOAD=("${LOAD[@]}") LOAD_NAME=$LOAD_NAME
    file_load "$MSG_SIGNED" "$MESSAGES"
    start_dns || { SLAU_LINE=$HELPER_LINE; return 1; }
    local ok=1
    sluice_file_run sluice-auth $'\n[dns]\nservers = ["'"$HOST:$DNS_PORT"'"]' \
        $'\n[[stage]]\nuse = "spf"\nfail = "tag"\n\n[[stage]]\nuse = "dkim-verify"\n\n[[stage]]\nuse = "dmarc"' \
        || ok=0
    stop_dns
    (( ok )) || { SLAU_LINE=$SR_LINE; return 1; }
    # Every message was verified: dkim=pass (the signature) and dmarc=pass (aligned, p=none).
    local want n f
    for want in dkim=pass dmarc=pass spf=pass; do
        n=$(missing_count "$SR_NEWDIR" "$want")
        if (( n )); then
            f=$(find "$SR_NEWDIR" -maxdepth 1 -type f -print0 | xargs -0 -r grep -L -F -e "$want" | head -n 1)
            SLAU_LINE="$n of $MESSAGES delivered messages lack '$want' in Authentication-Results; e.g. $(header_of "$f" Authentication-Results)"
            return 1
        fi
    done
    f=$(find "$SR_NEWDIR" -maxdepth 1 -type f -print -quit)
    # shellcheck disable=SC2034  # read by the details section
    SLAU_AR=$(header_of "$f" Authentication-Results)
    save_result SLAU
    SLAU_TERM=$SR_TERM
    # shellcheck disable=SC2034  # read by ms_per
    SLAU_SERVER_CPU=$SR_CPU
    SLAU_OK=1
}

# ---------------------------------------------------------------- sluice spam / milter
# The maildir run with the spam stage asking the bench's spamd (SLSP_*), or with the milter
# stage attached to the bench's opendkim (SLM_*); the plain prepared message, as Postfix's.
SLSP_OK=0; SLSP_LINE=""; SLM_OK=0; SLM_LINE=""
run_sluice_spam() {
    local MESSAGES=$MESSAGES LOAD=("${LOAD[@]}") LOAD_NAME=$LOAD_NAME TIMEOUT=$SPAM_TIMEOUT
    file_load "$MSG_PLAIN" "$SPAM_MESSAGES"
    sluice_file_run sluice-spam "" \
        $'\n[[stage]]\nuse = "spam"\nbackend = "spamd://'"$HOST:$SPAMD_PORT"$'"' \
        || { SLSP_LINE=$SR_LINE; return 1; }
    milter_check spam "$SR_NEWDIR" || { SLSP_LINE=$CHECK_LINE; return 1; }
    # shellcheck disable=SC2034
    SLSP_SAMPLE=$CHECK_SAMPLE
    save_result SLSP
    SLSP_TERM=$SR_TERM
    # shellcheck disable=SC2034  # read by ms_per
    SLSP_SERVER_CPU=$SR_CPU
    SLSP_OK=1
}

run_sluice_milter() {
    local MESSAGES=$MESSAGES LOAD=("${LOAD[@]}") LOAD_NAME=$LOAD_NAME
    file_load "$MSG_PLAIN" "$MESSAGES"
    # default_action = "accept": as Postfix's milter_default_action here
    sluice_file_run sluice-milter "" \
        $'\n[[stage]]\nuse = "milter"\nname = "opendkim"\nsocket = "inet:'"$HOST:$OPENDKIM_PORT"$'"\ndefault_action = "accept"' \
        || { SLM_LINE=$SR_LINE; return 1; }
    milter_check milter "$SR_NEWDIR" || { SLM_LINE=$CHECK_LINE; return 1; }
    # shellcheck disable=SC2034
    SLM_SAMPLE=$CHECK_SAMPLE
    save_result SLM
    SLM_TERM=$SR_TERM
    # shellcheck disable=SC2034  # read by ms_per
    SLM_SERVER_CPU=$SR_CPU
    SLM_OK=1
}

# ---------------------------------------------------------------- run
RUN_FILE=0   # a run that sends the prepared message (auth, spam, milter)
(( (RUN_AUTH && RUN_SLUICE) || RUN_SPAM || RUN_MILTER )) && RUN_FILE=1
if (( RUN_FILE )) && ! make_messages; then
    FAILED=1
    MSG_LINE="no prepared message: $MSG_LINE"
    SLAB_LINE=$MSG_LINE; SLAU_LINE=$MSG_LINE; PFSP_LINE=$MSG_LINE; SLSP_LINE=$MSG_LINE
    PFM_LINE=$MSG_LINE; SLM_LINE=$MSG_LINE
    log "messages: FAILED: $MSG_LINE"
fi
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
if (( RUN_AUTH && RUN_SLUICE )) && [[ -n $MSG_DIR ]]; then
    run_sluice_auth_base || { FAILED=1; log "sluice-auth-base: FAILED: $SLAB_LINE"; }
    run_sluice_auth || { FAILED=1; log "sluice-auth: FAILED: $SLAU_LINE"; }
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
# One spamd for both spam runs; spamass-milter only for Postfix's.
if (( RUN_SPAM )) && [[ -n $MSG_DIR ]]; then
    if ! start_spamd; then
        FAILED=1; PFSP_LINE=$HELPER_LINE; SLSP_LINE=$HELPER_LINE
        log "spam: FAILED: $HELPER_LINE"
    else
        if (( RUN_POSTFIX )); then
            if start_spamass_milter; then
                run_postfix spam || { FAILED=1; log "postfix-spam: FAILED: $PFSP_LINE"; }
                stop_spamass_milter
            else
                FAILED=1; PFSP_LINE=$HELPER_LINE
                log "postfix-spam: FAILED: $PFSP_LINE"
            fi
        fi
        if (( RUN_SLUICE )); then
            run_sluice_spam || { FAILED=1; log "sluice-spam: FAILED: $SLSP_LINE"; }
        fi
        stop_spamd
    fi
fi
# One opendkim for both milter runs.
if (( RUN_MILTER )) && [[ -n $MSG_DIR ]]; then
    if ! start_opendkim; then
        FAILED=1; PFM_LINE=$HELPER_LINE; SLM_LINE=$HELPER_LINE
        log "milter: FAILED: $HELPER_LINE"
    else
        if (( RUN_POSTFIX )); then
            run_postfix milter || { FAILED=1; log "postfix-milter: FAILED: $PFM_LINE"; }
        fi
        if (( RUN_SLUICE )); then
            run_sluice_milter || { FAILED=1; log "sluice-milter: FAILED: $SLM_LINE"; }
        fi
        stop_opendkim
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
if (( RUN_FILE )) && [[ -n $MSG_DIR ]]; then
    echo "message: the auth runs send $MSG_SIGNED ($(stat -c %s "$MSG_SIGNED") bytes, DKIM-signed by dkimpy: rsa-sha256 2048 bits, relaxed/relaxed, d=$DKIM_DOMAIN s=$DKIM_SELECTOR), the spam and milter runs $MSG_PLAIN ($(stat -c %s "$MSG_PLAIN") bytes, the same unsigned), with smtp-source -F (-s $SESSIONS, reuse=$REUSE)"
fi
# ms_per PREFIX COUNT: the server's CPU per message in milliseconds.
ms_per() { local v=${1}_SERVER_CPU; fcalc %.2f "1000 * ${!v} / $2"; }
(( SLAB_OK )) && echo "auth without: client done after $SLAB_SRC s, last delivery at $SLAB_ELAPSED s; sluice CPU $(ms_per SLAB "$MESSAGES") ms/msg; $SLAB_TERM"
if (( SLAU_OK )); then
    echo "auth with:    client done after $SLAU_SRC s, last delivery at $SLAU_ELAPSED s; sluice CPU $(ms_per SLAU "$MESSAGES") ms/msg; $SLAU_TERM"
    echo "auth with:    every message has dkim=pass, spf=pass and dmarc=pass; one: $SLAU_AR"
fi
if (( RUN_SPAM )) && [[ -n $SPAMD_WARMUP ]]; then
    echo "spam:    spamd -L (offline), $SPAMD_CHILDREN children, no Bayes; the message scores $SPAMD_WARMUP; Postfix through spamass-milter -m (one spamc per message), Sluice through the spam stage (SPAMC/1.5); RSS/PSS leave spamd out"
fi
(( PFSP_OK )) && echo "spam postfix: client done after $PFSP_SRC s, last delivery at $PFSP_ELAPSED s; CPU postfix $(ms_per PFSP "$SPAM_MESSAGES") + spamass-milter/spamc $(fcalc %.2f "1000 * $PFSP_MILTER_CPU / $SPAM_MESSAGES") ms/msg; $PFSP_SAMPLE"
(( SLSP_OK )) && echo "spam sluice:  client done after $SLSP_SRC s, last delivery at $SLSP_ELAPSED s; CPU sluice $(ms_per SLSP "$SPAM_MESSAGES") ms/msg; $SLSP_SAMPLE; $SLSP_TERM"
if (( RUN_MILTER )) && [[ -n $MSG_DIR ]]; then
    echo "milter:  opendkim -f (Mode s, d=$DKIM_DOMAIN s=$DKIM_SELECTOR, rsa-sha256 relaxed/relaxed, InternalHosts 127.0.0.1) on $HOST:$OPENDKIM_PORT; Postfix smtpd_milters, Sluice's milter stage; RSS/PSS leave opendkim out"
fi
(( PFM_OK )) && echo "milter postfix: client done after $PFM_SRC s, last delivery at $PFM_ELAPSED s; CPU postfix $(ms_per PFM "$MESSAGES") ms/msg; $PFM_SAMPLE"
(( SLM_OK )) && echo "milter sluice:  client done after $SLM_SRC s, last delivery at $SLM_ELAPSED s; CPU sluice $(ms_per SLM "$MESSAGES") ms/msg; $SLM_SAMPLE; $SLM_TERM"
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
if (( RUN_AUTH && RUN_SLUICE )); then
    if (( SLAB_OK )); then
        printf 'sluice, signed message, no auth stages: %d msgs in %.2f s = %.0f msgs/s, peak RSS %s MB\n' \
            "$MESSAGES" "$SLAB_ELAPSED" "$SLAB_RATE" "$(mb "$SLAB_RSS_KB")"
    else
        echo "sluice, signed message, no auth stages: FAILED: $SLAB_LINE"
    fi
    if (( SLAU_OK )); then
        printf 'sluice, signed message, spf + dkim-verify + dmarc: %d msgs in %.2f s = %.0f msgs/s, peak RSS %s MB\n' \
            "$MESSAGES" "$SLAU_ELAPSED" "$SLAU_RATE" "$(mb "$SLAU_RSS_KB")"
    else
        echo "sluice, signed message, spf + dkim-verify + dmarc: FAILED: $SLAU_LINE"
    fi
    if (( SLAB_OK && SLAU_OK )); then
        pct=$(fcalc %.0f "100 * $SLAU_RATE / $SLAB_RATE")
        verdict=""
        if (( $(fcalc %d "100 * $SLAU_RATE < $AUTH_TARGET * $SLAB_RATE") )); then
            verdict=" -- BELOW TARGET"; AUTH_BAD=1
        fi
        printf 'dkim-verify + dmarc (+spf): %.0f msgs/s = %d%% of the same run without (target >= %d%%)%s\n' \
            "$SLAU_RATE" "$pct" "$AUTH_TARGET" "$verdict"
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
# milter_summary LABEL PREFIX LINE-PREFIX: one server's line of the spam or milter run.
milter_summary() {
    local ok=${2}_OK el=${2}_ELAPSED rate=${2}_RATE rss=${2}_RSS_KB pss=${2}_PSS_KB line=${2}_LINE
    if (( ${!ok} )); then
        printf '%s %d msgs in %.2f s = %.1f msgs/s, peak RSS %s MB (PSS %s MB)\n' \
            "$1" "$3" "${!el}" "${!rate}" "$(mb "${!rss}")" "$(mb "${!pss}")"
    else
        echo "$1 FAILED: ${!line}"
    fi
}
(( RUN_SPAM && RUN_POSTFIX )) && milter_summary "spam postfix (spamass-milter + spamd):" PFSP "$SPAM_MESSAGES"
(( RUN_SPAM && RUN_SLUICE )) && milter_summary "spam sluice (spam stage + spamd):      " SLSP "$SPAM_MESSAGES"
if (( PFSP_OK && SLSP_OK )); then
    verdict=""
    if (( $(fcalc %d "100 * $SLSP_RATE < $SPAM_TARGET * $PFSP_RATE") )); then
        verdict=" -- BELOW $(fcalc %.2f "$SPAM_TARGET / 100")x POSTFIX"; SPAM_BAD=1
    fi
    printf 'spam ratio sluice/postfix: %.2f (the scanner dominates; flagged below %.2f)%s\n' \
        "$(fcalc %.4f "$SLSP_RATE / $PFSP_RATE")" "$(fcalc %.2f "$SPAM_TARGET / 100")" "$verdict"
fi
(( RUN_MILTER && RUN_POSTFIX )) && milter_summary "milter postfix (opendkim signing):" PFM "$MESSAGES"
(( RUN_MILTER && RUN_SLUICE )) && milter_summary "milter sluice (opendkim signing): " SLM "$MESSAGES"
if (( PFM_OK && SLM_OK )); then
    verdict=""
    if (( $(fcalc %d "100 * $SLM_RATE < $MILTER_TARGET * $PFM_RATE") )); then
        verdict=" -- BELOW TARGET"; MILTER_BAD=1
    fi
    printf 'milter ratio sluice/postfix: %.2f (target >= %.2f; project goal 1.5)%s\n' \
        "$(fcalc %.4f "$SLM_RATE / $PFM_RATE")" "$(fcalc %.2f "$MILTER_TARGET / 100")" "$verdict"
fi

(( FAILED )) && exit 1
(( IDLE_BAD )) && exit 3
(( ACCEPT_BAD )) && exit 4
(( SPF_BAD )) && exit 5
(( AUTH_BAD )) && exit 6
(( SPAM_BAD )) && exit 7
(( MILTER_BAD )) && exit 8
exit 0
