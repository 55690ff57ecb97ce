# Probes: packet and kernel evidence at each step of scenarios 7 and 8 (sourced by both domains
# before the scenario scripts).
#
# Step K of a scenario sends, both ways on both networks, one 64 KiB TCP transfer and 10 UDP
# datagrams of 512 bytes, each on ports of its own (so one capture running through many steps
# is counted per step by destination port):
#   dom0 -> guest   10.0.0.2 (eth0, public)   TCP 6000+4K   UDP 6002+4K
#                   10.1.0.2 (eth1, private)  TCP 6001+4K   UDP 6003+4K
#   guest -> dom0   10.0.0.9 (xo-capn)        TCP 6100+4K   UDP 6102+4K
#                   10.1.0.1 (xenpriv0)       TCP 6101+4K   UDP 6103+4K
# Captures (tcpdump -tt -vv, running while the scenario runs): the guest's eth0 and eth1 (what
# arrives; GRO off, see scenario 3), dom0's capture namespace xo-capn (after the public vif's
# ingress, through the bridge) and xenpriv0 (what dom0 receives from the private vif). At each
# step both domains also record `ethtool -k` and the tc state of their devices, and dom0 both
# ends' xenoffload-csum-result and -status; `xo_probe_report` turns it all into facts.

XO_PROBE_STEPS=20
XO_PROBE_DIR=/tmp/probe

# xo_probe_ports BASE: the --port options of a sink for every step (BASE+4K).
xo_probe_ports() {
    local _k=0
    while [ $_k -lt $XO_PROBE_STEPS ]; do
        printf -- '--port %s ' $(($1 + 4 * _k))
        _k=$((_k + 1))
    done
}

# xo_probe_dom0_start EPOCH: dom0's sinks (once) and captures (named after EPOCH).
xo_probe_dom0_start() {
    if [ ! -e /tmp/sink-cap.listening ]; then
        # shellcheck disable=SC2046
        $IP netns exec xo-cap $XO_PY sink --bind 10.0.0.9 $(xo_probe_ports 6100) \
            --out /tmp/sink-cap >/dev/null 2>&1 &
        # shellcheck disable=SC2046
        $XO_PY sink --bind 10.1.0.1 $(xo_probe_ports 6101) --out /tmp/sink-priv \
            >/dev/null 2>&1 &
    fi
    xo_capture "fg-pub-$1" xo-capn 'src host 10.0.0.2 and (tcp or udp)' xo-cap
    xo_capture "fg-priv-$1" xenpriv0 'src host 10.1.0.2 and (tcp or udp)'
    xo_wait_listening 60 /tmp/sink-cap /tmp/sink-priv
}

# g_probe_start EPOCH: the guest's sink (once per boot) and captures; GRO off on eth0, eth1.
g_probe_start() {
    $ETHTOOL -K eth0 gro off; $ETHTOOL -K eth1 gro off
    if [ ! -e /tmp/sink-guest.listening ]; then
        # shellcheck disable=SC2046
        $XO_PY sink --bind 0.0.0.0 $(xo_probe_ports 6000) $(xo_probe_ports 6001) \
            --out /tmp/sink-guest >/dev/null 2>&1 &
    fi
    xo_capture "tg-pub-$1" eth0 'src host 10.0.0.1 and (tcp or udp or icmp)' &&
        xo_capture "tg-priv-$1" eth1 'src host 10.1.0.1 and (tcp or udp)' &&
        xo_wait_listening 60 /tmp/sink-guest
}

# xo_probe_step SCENARIO K LABEL DEV0 DEV1: step K of the scenario, named LABEL; DEV0, DEV1
# are dom0's devices of vif 0 and 1 (their names change with the domid and vifname=).
xo_probe_step() {
    local _s=$1 _k=$2 _l=$3 _d0=$4 _d1=$5 _d _key _pid
    mkdir -p "$XO_PROBE_DIR/$_l"
    $XO_PY batch \
        "tcp-send --scenario $_s --label $_l-tg-pub --host 10.0.0.2 --port $((6000 + 4 * _k)) --bytes 65536 --timeout 30" \
        "udp-send --scenario $_s --label $_l-tg-pub --host 10.0.0.2 --port $((6002 + 4 * _k)) --count 10 --interval 0.01" \
        "tcp-send --scenario $_s --label $_l-tg-priv --host 10.1.0.2 --port $((6001 + 4 * _k)) --bytes 65536 --timeout 30" \
        "udp-send --scenario $_s --label $_l-tg-priv --host 10.1.0.2 --port $((6003 + 4 * _k)) --count 10 --interval 0.01" \
        >"$XO_PROBE_DIR/$_l/sends" 2>&1 &
    _pid=$!
    gcall 90 g_probe_step "$_s" "$_k" "$_l"  # the guest sends meanwhile
    xo_kill_wait_exit "$_pid" 60
    xo_ethtool_save "$XO_PROBE_DIR/$_l" "$_d0" "$_d1"
    xo_tc_save "$XO_PROBE_DIR/$_l" "$_d0" "$_d1"
    set --
    for _d in 0 1; do
        for _key in xenoffload-csum-result xenoffload-csum-status; do
            set -- "$@" "/local/domain/0/backend/vif/$GDOM/$_d/$_key" \
                "/local/domain/$GDOM/device/vif/$_d/$_key"
        done
    done
    xo_xs_values "$XO_PROBE_DIR/$_l/xs" "$@"
    echo "$_l $_d0 $_d1" >>"$XO_PROBE_DIR/steps"
    grep '^@@XO ' "$XO_PROBE_DIR/$_l/sends"
    xo_emit "$_s" probe-step step "$_k" label "$_l" dom0_devices "$_d0 $_d1" domid "$GDOM" \
        uptime "$(xo_now)"
}

g_probe_step() {
    local _s=$1 _k=$2 _l=$3
    mkdir -p "$XO_PROBE_DIR/$_l"
    $XO_PY batch \
        "tcp-send --scenario $_s --label $_l-fg-pub --host 10.0.0.9 --port $((6100 + 4 * _k)) --bytes 65536 --timeout 30" \
        "udp-send --scenario $_s --label $_l-fg-pub --host 10.0.0.9 --port $((6102 + 4 * _k)) --count 10 --interval 0.01" \
        "tcp-send --scenario $_s --label $_l-fg-priv --host 10.1.0.1 --port $((6101 + 4 * _k)) --bytes 65536 --timeout 30" \
        "udp-send --scenario $_s --label $_l-fg-priv --host 10.1.0.1 --port $((6103 + 4 * _k)) --count 10 --interval 0.01"
    xo_ethtool_save "$XO_PROBE_DIR/$_l" eth0 eth1
    xo_tc_save "$XO_PROBE_DIR/$_l" eth0 eth1
    echo "$_l eth0 eth1" >>"$XO_PROBE_DIR/steps"
}

# xo_probe_items SCENARIO: the xo.py batch items reporting every step recorded so far (the
# ethtool, tc and XenStore facts, labelled with the step), from $XO_PROBE_DIR/steps.
xo_probe_items() {
    local _l _a _b
    while read -r _l _a _b; do
        echo "ethtool --scenario $1 --label $_l --saved $XO_PROBE_DIR/$_l $_a $_b"
        echo "tc --scenario $1 --label $_l --saved $XO_PROBE_DIR/$_l $_a $_b"
        [ -e "$XO_PROBE_DIR/$_l/xs" ] &&
            echo "xsvalues --scenario $1 --label $_l --saved $XO_PROBE_DIR/$_l/xs"
    done <"$XO_PROBE_DIR/steps"
    rm -f "$XO_PROBE_DIR/steps"
}

# xo_probe_report SCENARIO EPOCH [EXTRA-ITEM...]: stop this domain's captures of EPOCH (dom0:
# from-guest, fg-*; guest: to-guest, tg-*) and report them (counts per destination port) with
# every step recorded here since the last report and the EXTRA-ITEMs, in one Python start.
xo_probe_report() {
    local _s=$1 _e=$2 _line _c=fg
    shift 2
    [ "$XO_DOMAIN" = guest ] && _c=tg
    xo_capture_stop "$_c-pub-$_e" "$_c-priv-$_e"
    xo_probe_items "$_s" >/tmp/probe-items
    set -- "$@" "tcpdump-count --scenario $_s --mode probe-$_e --by-port $_c-pub:/tmp/cap-$_c-pub-$_e $_c-priv:/tmp/cap-$_c-priv-$_e"
    while IFS= read -r _line; do set -- "$@" "$_line"; done </tmp/probe-items
    $XO_PY batch "$@"
}

g_probe_report() {
    xo_probe_report "$@"
}

# xo_converged SCENARIO LABEL SECONDS PATH=VALUE...: wait for the agents (xo_wait_xs); emit
# whether and how fast they got there ("converged").
xo_converged() {
    local _s=$1 _l=$2 _t _rc
    shift 2
    _t=$(xo_wait_xs "$@")
    _rc=$?
    xo_emit "$_s" converged label "$_l" rc "$_rc" secs "$_t" domid "$GDOM"
    return $_rc
}

# xo_wait_xs SECONDS PATH=VALUE...: wait (bounded, polling 0.2 s) until every node holds its
# value ("~" in VALUE stands for a space: the items travel through word splitting); print the
# seconds it took (or "timeout"); return 1 on timeout.
xo_wait_xs() {
    local _t0 _end _it _ok
    _t0=$(xo_now)
    _end=$(($(cut -d. -f1 /proc/uptime) + $1))
    shift
    while :; do
        _ok=1
        for _it in "$@"; do
            [ "$(xenstore-read "${_it%%=*}" 2>/dev/null | tr ' ' '~')" = "${_it#*=}" ] ||
                { _ok=0; break; }
        done
        if [ $_ok = 1 ]; then
            awk "BEGIN{print $(xo_now) - $_t0}"
            return 0
        fi
        if [ "$(cut -d. -f1 /proc/uptime)" -ge "$_end" ]; then
            echo timeout
            return 1
        fi
        sleep 0.2
    done
}

# xo_vif_results DOMID DEVID TO FROM [STATUS_B [STATUS_F]]: the PATH=VALUE items (xo_wait_xs)
# saying both ends of vif DOMID/DEVID published result "to-guest=TO from-guest=FROM" (and
# those statuses).
xo_vif_results() {
    local _b=/local/domain/0/backend/vif/$1/$2 _f=/local/domain/$1/device/vif/$2
    echo "$_b/xenoffload-csum-result=to-guest=$3~from-guest=$4"
    echo "$_f/xenoffload-csum-result=to-guest=$3~from-guest=$4"
    [ -n "$5" ] && echo "$_b/xenoffload-csum-status=$(echo "$5" | tr ' ' '~')"
    [ -n "$6" ] && echo "$_f/xenoffload-csum-status=$(echo "$6" | tr ' ' '~')"
    return 0
}

# Results the lab's policies give (docs/xenlab.md): the public vif computes everything, with
# tc at both ends; the private one lets blank checksums cross both ways.
XO_ST_BACK_COMPUTE="ok (enforced-by-tc: ingress ipv4, ingress ipv6)"
XO_ST_FRONT_COMPUTE="ok (enforced-by-tc: egress ipv4)"
XO_ST_FRONT_NO_ACT_CSUM="unenforced: tx-checksum-ipv4 stays on (fixed on by the driver; tc egress \
ipv4: act_csum unavailable (ENOENT: Failed to load TC action module))"

# xo_backend_daemon_start: dom0's backend agent as a daemon (default policy path
# /etc/xenoffload/policy.toml, real toggles and tc), appending to /run/xo/backend.log.
xo_backend_daemon_start() {
    mkdir -p /run/xo
    TZ=UTC $XO_CLI -v backend-agent --mode companion --xenstore /run/xenstored/socket \
        --toggles netlink >>/run/xo/backend.log 2>&1 &
    echo $! >/run/xo/backend.pid
}
