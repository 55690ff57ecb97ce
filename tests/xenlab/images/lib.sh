# Shell helpers shared by the Xen lab's dom0 and guest init scripts and the scenario scripts.
# Sourced by busybox sh; XO_DOMAIN (dom0|guest) must be set first.
# Output conventions on the console (parsed by tests/xenlab/xenlab.py on the host):
#   @@XO {json}   one fact (dom0 prints them; guest facts are relayed through XenStore by dom0)
#   @@XL ...      human-readable progress line
#   @@G ...       a line of the guest's console, relayed by dom0

XO_LIB=/usr/lib/xenlab
XO_PY="/usr/bin/python3 $XO_LIB/xo.py"
# Real tools by absolute path: busybox applets in /bin would otherwise shadow them.
IP=/usr/sbin/ip
BRCTL=/usr/sbin/brctl
ETHTOOL=/usr/sbin/ethtool
TCPDUMP=/usr/bin/tcpdump
TC=/usr/sbin/tc
# The xenoffload CLI, and the lab's policies (scenarios/configs).
XO_CLI="/usr/bin/python3 -m xenoffload"
XO_CONF=$XO_LIB/scenarios/configs

xo_now() { cut -d' ' -f1 /proc/uptime; }

xo_log() { echo "@@XL $(xo_now) [$XO_DOMAIN] $*"; }

# xo_json_str VALUE: VALUE as a JSON string (escapes backslash, quote; drops control chars).
xo_json_str() {
    printf '"%s"' "$(printf '%s' "$1" | tr -d '\000-\037' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"
}

# xo_emit SCENARIO FACT [KEY VALUE]...: print one fact. Integers stay numbers, the rest strings.
xo_emit() {
    local _s=$1 _f=$2 _j _v
    shift 2
    _j="{\"scenario\":$(xo_json_str "$_s"),\"domain\":\"$XO_DOMAIN\",\"fact\":$(xo_json_str "$_f")"
    while [ $# -ge 2 ]; do
        case $2 in
            ''|*[!0-9]*|0?*) _v=$(xo_json_str "$2") ;;
            *) _v=$2 ;;
        esac
        _j="$_j,$(xo_json_str "$1"):$_v"
        shift 2
    done
    echo "@@XO $_j}"
}

xo_stage() { echo "@@XO {\"stage\":\"$1\",\"domain\":\"$XO_DOMAIN\",\"uptime\":$(xo_now)}"; }

# xs_wait_change PATH SECONDS: return when PATH changes or SECONDS pass (a watch, not a poll).
xs_wait_change() {
    timeout "$2" xenstore-watch -n 2 "$1" >/dev/null 2>&1
    return 0
}

# xo_wait_file FILE SECONDS: wait until FILE exists (bounded).
xo_wait_file() {
    local _w=0
    while [ ! -e "$1" ] && [ "$_w" -lt $(($2 * 5)) ]; do sleep 0.2; _w=$((_w + 1)); done
    [ -e "$1" ]
}

# xo_kill_wait PID SIGNAL SECONDS: signal a background process and reap it (bounded).
xo_kill_wait() {
    local _w=0
    kill "-$2" "$1" 2>/dev/null
    while kill -0 "$1" 2>/dev/null && [ "$_w" -lt $(($3 * 5)) ]; do sleep 0.2; _w=$((_w + 1)); done
    kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
    return 0
}

# xo_kill_wait_exit PID SECONDS: wait (bounded) for a background process to end by itself,
# then reap it (killed if it overran).
xo_kill_wait_exit() {
    local _w=0
    while kill -0 "$1" 2>/dev/null && [ "$_w" -lt $(($2 * 5)) ]; do sleep 0.2; _w=$((_w + 1)); done
    xo_kill_wait "$1" TERM 2
}

# xo_cli_present: does this image's xenoffload have its CLI (python3 -m xenoffload)? A file test,
# not a `--help` run (2 s of Python start-up under TCG): a CLI that is there but broken shows in
# the agents' exit status, which the host asserts on.
XO_SITE=/usr/lib/python3/dist-packages
xo_cli_present() {
    if [ -f "$XO_SITE/xenoffload/__main__.py" ] && [ -f "$XO_SITE/xenoffload/cli.py" ]; then
        return 0
    fi
    echo "no $XO_SITE/xenoffload/__main__.py or cli.py" >/tmp/xo-cli-help.txt
    return 1
}

# xo_results SCENARIO SECONDS FACT:LABEL:FILE...: print the fact each receiver (xo.py tcp-recv,
# udp-recv, recv) wrote to FILE.fact, waiting for all within one bounded deadline; a missing one
# becomes a fact with "ok": false. No Python start.
xo_results() {
    local _s=$1 _end _it _fact _label _file
    _end=$(($(cut -d. -f1 /proc/uptime) + $2))
    shift 2
    for _it in "$@"; do
        _fact=${_it%%:*}; _file=${_it#*:}; _label=${_file%%:*}; _file=${_file#*:}
        while [ ! -e "$_file.fact" ] && [ "$(cut -d. -f1 /proc/uptime)" -lt "$_end" ]; do
            sleep 0.2
        done
        if [ -e "$_file.fact" ]; then
            cat "$_file.fact"
        else
            echo "@@XO {\"scenario\":$(xo_json_str "$_s"),\"domain\":\"$XO_DOMAIN\",\"fact\":$(xo_json_str "$_fact"),\"label\":$(xo_json_str "$_label"),\"ok\":false,\"error\":\"no result (timeout)\"}"
        fi
    done
}

# xo_ethtool_save DIR IFACE...: record `ethtool -k` of each interface now (DIR/IFACE.out, .rc);
# `xo.py ethtool --saved DIR --label L IFACE...` reports them later, in one Python start.
xo_ethtool_save() {
    local _d=$1 _i
    shift
    mkdir -p "$_d"
    for _i in "$@"; do
        timeout 30 $ETHTOOL -k "$_i" >"$_d/$_i.out" 2>&1
        echo $? >"$_d/$_i.rc"
    done
}

# xo_xsdir_save FILE PATH: record `xenstore-ls -f -p PATH` now (FILE, FILE.rc), for
# `xo.py xsdir --saved FILE PATH` later.
xo_xsdir_save() {
    mkdir -p "$(dirname "$1")"
    timeout 30 xenstore-ls -f -p "$2" >"$1" 2>&1
    echo $? >"$1.rc"
}

# xo_run SCENARIO LABEL SECONDS CMD...: run a command (bounded); emit a "cli" fact with its exit
# status and the tail of its output, and print all of its output on the console (dom0's, or
# the guest's relayed at the end), each line prefixed "  [LABEL] "; return its status.
xo_run() {
    local _s=$1 _label=$2 _secs=$3 _rc
    shift 3
    timeout "$_secs" "$@" >/tmp/xo-run-out 2>&1
    _rc=$?
    xo_emit "$_s" cli label "$_label" rc "$_rc" output "$(tail -c 1000 /tmp/xo-run-out | tr '\n' '|')"
    sed "s/^/@@XL   [$_label] /" /tmp/xo-run-out
    return $_rc
}

# xo_agent_presence SCENARIO: emit whether this image's xenoffload has its CLI ("agent" fact);
# return 1 if it has not (the scenario then does nothing else).
xo_agent_presence() {
    if ! xo_cli_present; then
        xo_emit "$1" agent agent absent detail "$(tail -n 1 /tmp/xo-cli-help.txt)"
        return 1
    fi
    xo_emit "$1" agent agent present
}

# xo_tc_save DIR IFACE...: record each interface's tc state now (qdiscs, filters of both hooks
# with their counters, the link with gso_max_segs) for `xo.py tc --saved DIR` later.
xo_tc_save() {
    local _d=$1 _i
    shift
    mkdir -p "$_d"
    for _i in "$@"; do
        timeout 20 $TC -j qdisc show dev "$_i" >"$_d/$_i.qdisc" 2>/dev/null
        timeout 20 $TC -s -j filter show dev "$_i" ingress >"$_d/$_i.ingress" 2>/dev/null
        timeout 20 $TC -s -j filter show dev "$_i" egress >"$_d/$_i.egress" 2>/dev/null
        timeout 20 $IP -d -j link show "$_i" >"$_d/$_i.link" 2>/dev/null
    done
}

# xo_capture NAME IFACE FILTER [NETNS]: start tcpdump -tt -vv on IFACE (in NETNS if given) into
# /tmp/cap-NAME (pid in /tmp/cap-NAME.pid); return once it listens (bounded).
xo_capture() {
    local _n=$1 _i=$2 _f=$3 _ns=$4 _w=0
    rm -f "/tmp/cap-$_n" "/tmp/cap-$_n.err"
    if [ -n "$_ns" ]; then
        $IP netns exec "$_ns" $TCPDUMP -Z root -i "$_i" -nn -tt -vv -l -s 262144 "$_f" \
            >"/tmp/cap-$_n" 2>"/tmp/cap-$_n.err" &
    else
        $TCPDUMP -Z root -i "$_i" -nn -tt -vv -l -s 262144 "$_f" \
            >"/tmp/cap-$_n" 2>"/tmp/cap-$_n.err" &
    fi
    echo $! >"/tmp/cap-$_n.pid"
    while ! grep -q listening "/tmp/cap-$_n.err" 2>/dev/null && [ $_w -lt 100 ]; do
        sleep 0.1; _w=$((_w + 1))
    done
    grep -q listening "/tmp/cap-$_n.err"
}

# xo_capture_stop NAME...: stop those captures (SIGINT, bounded) after a short drain.
xo_capture_stop() {
    local _n
    sleep 0.5
    for _n in "$@"; do
        xo_kill_wait "$(cat "/tmp/cap-$_n.pid" 2>/dev/null)" INT 10
    done
}

# xo_marker DST SIZE: one ICMP echo request of SIZE bytes to DST, a time marker in captures
# (`xo.py timeline --mark NAME=SIZE`): the same clock as the packets around it.
xo_marker() {
    ping -c 1 -W 1 -s "$2" "$1" >/dev/null 2>&1
    return 0
}

# xo_xs_values FILE PATH...: record "PATH=VALUE" of each XenStore node now (no Python).
xo_xs_values() {
    local _f=$1 _p
    shift
    : >"$_f"
    for _p in "$@"; do
        echo "$_p=$(xenstore-read "$_p" 2>/dev/null)" >>"$_f"
    done
}

# xo_wait_listening SECONDS FILE...: wait until every receiver FILE has its FILE.listening.
xo_wait_listening() {
    local _end _f _ok=0
    _end=$(($(cut -d. -f1 /proc/uptime) + $1))
    shift
    while [ "$(cut -d. -f1 /proc/uptime)" -lt "$_end" ]; do
        _ok=1
        for _f in "$@"; do [ -e "$_f.listening" ] || _ok=0; done
        [ $_ok = 1 ] && return 0
        sleep 0.2
    done
    return 1
}

# xo_source_scenarios: define every scenario's functions (both domains source all of them).
xo_source_scenarios() {
    local _f
    . "$XO_LIB/scenarios/probes.sh"
    for _f in "$XO_LIB"/scenarios/[0-9]*.sh; do
        [ -f "$_f" ] && . "$_f"
    done
}

# xo_py_timing SCENARIO: how long python3 takes to start here (bare, with site, with xenoffload).
xo_py_timing() {
    local _a _b _c _d
    _a=$(xo_now); /usr/bin/python3 -S -c pass
    _b=$(xo_now); /usr/bin/python3 -c pass
    _c=$(xo_now); /usr/bin/python3 -c 'import xenoffload, attrs, pyxs, asyncio, argparse, logging'
    _d=$(xo_now)
    xo_emit "$1" python-startup no_site "$(awk "BEGIN{print $_b - $_a}")" \
        site "$(awk "BEGIN{print $_c - $_b}")" xenoffload "$(awk "BEGIN{print $_d - $_c}")"
}

# xo_guest_agent_start WHY: start the guest agent daemon in the background (the lab's guest
# policy, real toggles and tc), logging to /run/xo-guest-agent.log; pid in /run/xo-guest-agent.pid.
xo_guest_agent_start() {
    xo_log "starting guest-agent ($1)"
    TZ=UTC $XO_CLI -v guest-agent --mode companion --xenstore /dev/xen/xenbus \
        --config "$XO_CONF/guest.toml" --toggles netlink >>/run/xo-guest-agent.log 2>&1 &
    echo $! >/run/xo-guest-agent.pid
}
