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
# status and the tail of its output; return its status.
xo_run() {
    local _s=$1 _label=$2 _secs=$3 _rc
    shift 3
    timeout "$_secs" "$@" >/tmp/xo-run-out 2>&1
    _rc=$?
    xo_emit "$_s" cli label "$_label" rc "$_rc" output "$(tail -c 1000 /tmp/xo-run-out | tr '\n' '|')"
    return $_rc
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
