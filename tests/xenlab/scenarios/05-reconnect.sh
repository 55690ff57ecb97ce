# Scenario 5 — frontend reconnect (what a guest reboot does to its vifs' XenBus devices): after
# scenario 4 left both vifs negotiated by the agents, the guest unbinds xen-netfront from vif-0 and
# vif-1 through sysfs and binds it again. The real drivers go through the renegotiation of R12:
# netfront Closing -> Closed, then (new netdev) Initialising -> Connected; netback Closing ->
# Closed -> InitWait ("prepare for reconnect") -> Connected. The vif netdevs in dom0 survive (the
# backend device stays online), the guest's ethN are new netdevs. Then both agents run once again
# (as in scenario 4), and the facts show: the XenbusState sequences (from xenstored's own trace,
# after a marker write), the kernel features before and after the agents, xenoffload's keys
# before the reconnect, right after it and after the agents, and traffic on both networks.
# Needs the xenoffload CLI (as scenario 4); otherwise reports "agent": "absent".

S5_MARK=/local/domain/0/data/xenlab-mark
S5_DIRS=/tmp/s5-xs
S5_TO_GUEST="tcp:10.0.0.2:5501:public-dom0-to-guest:/tmp/s5-r5501.json \
tcp:10.1.0.2:5502:private-dom0-to-guest:/tmp/s5-r5502.json"

# s5_save_dirs MOMENT: record both vifs' backend and frontend directories now.
s5_save_dirs() {
    for _d in 0 1; do
        xo_xsdir_save "$S5_DIRS/$1-backend-$_d" "/local/domain/0/backend/vif/$GDOM/$_d"
        xo_xsdir_save "$S5_DIRS/$1-frontend-$_d" "/local/domain/$GDOM/device/vif/$_d"
    done
}

# s5_dir_items MOMENT: xo.py batch items reporting what s5_save_dirs MOMENT recorded.
s5_dir_items() {
    for _d in 0 1; do
        echo "xsdir --scenario 5 --label $1-backend-$_d --saved $S5_DIRS/$1-backend-$_d /local/domain/0/backend/vif/$GDOM/$_d"
        echo "xsdir --scenario 5 --label $1-frontend-$_d --saved $S5_DIRS/$1-frontend-$_d /local/domain/$GDOM/device/vif/$_d"
    done
}

s5_dom0() {
    xo_agent_presence 5 || return 0
    rm -rf "$S5_DIRS"
    s5_save_dirs before
    xenstore-write "$S5_MARK" s5-reconnect
    _t0=$(xo_now)
    gcall 200 g_s5_reconnect
    # The guest saw its end Connected again; wait (bounded) for both ends of both vifs.
    _ok=0
    for _i in $(seq 1 120); do
        _ok=1
        for _d in 0 1; do
            [ "$(xenstore-read /local/domain/0/backend/vif/$GDOM/$_d/state 2>/dev/null)" = 4 ] || _ok=0
            [ "$(xenstore-read /local/domain/$GDOM/device/vif/$_d/state 2>/dev/null)" = 4 ] || _ok=0
        done
        [ $_ok = 1 ] && break
        sleep 0.5
    done
    _t1=$(xo_now)
    xo_emit 5 reconnected ok "$_ok" secs "$(awk "BEGIN{print $_t1 - $_t0}")"
    for _d in 0 1; do
        _be=/local/domain/0/backend/vif/$GDOM/$_d
        _fe=/local/domain/$GDOM/device/vif/$_d
        xo_emit 5 vif devid "$_d" vif "vif$GDOM.$_d" \
            backend_state "$(xenstore-read $_be/state 2>/dev/null)" \
            frontend_state "$(xenstore-read $_fe/state 2>/dev/null)" \
            hotplug_status "$(xenstore-read $_be/hotplug-status 2>/dev/null)" \
            bridge_actual "$(basename "$(readlink /sys/class/net/vif$GDOM.$_d/master 2>/dev/null)" 2>/dev/null)" \
            operstate "$(cat /sys/class/net/vif$GDOM.$_d/operstate 2>/dev/null)"
    done
    s5_save_dirs reconnected
    xo_ethtool_save /tmp/s5-eth-before-agents "vif$GDOM.0" "vif$GDOM.1"
    s4_backend_once backend-agent 5
    gcall 240 g_s5_agent
    s5_save_dirs after
    xo_ethtool_save /tmp/s5-eth-after-agents "vif$GDOM.0" "vif$GDOM.1"
    xo_tc_save /tmp/s5-tc-after-agents "vif$GDOM.0" "vif$GDOM.1"
    for _net in public:10.0.0.2 private:10.1.0.2; do
        ping -c 3 -i 0.3 -W 2 "${_net#*:}" >/tmp/ping.out 2>&1
        xo_emit 5 ping label "${_net%%:*}" from dom0 to "${_net#*:}" rc "$?" \
            summary "$(grep -E 'packets transmitted' /tmp/ping.out)"
    done
    # One Python start for everything recorded above, the trace's state sequences and the sends.
    _be=/local/domain/0/backend/vif/$GDOM
    _fe=/local/domain/$GDOM/device/vif
    s5_dir_items before >/tmp/s5-items
    s5_dir_items reconnected >>/tmp/s5-items
    s5_dir_items after >>/tmp/s5-items
    set --
    while IFS= read -r _line; do set -- "$@" "$_line"; done </tmp/s5-items
    $XO_PY batch "$@" \
        "ethtool --scenario 5 --label before-agents --saved /tmp/s5-eth-before-agents vif$GDOM.0 vif$GDOM.1" \
        "ethtool --scenario 5 --label after-agents --saved /tmp/s5-eth-after-agents vif$GDOM.0 vif$GDOM.1" \
        "tc --scenario 5 --label after-agents --saved /tmp/s5-tc-after-agents vif$GDOM.0 vif$GDOM.1" \
        "trace-states --scenario 5 --trace $XO_TRACE --mark '$S5_MARK s5-reconnect' backend-0=$_be/0/state frontend-0=$_fe/0/state backend-1=$_be/1/state frontend-1=$_fe/1/state" \
        "tcp-send --scenario 5 --label public-dom0-to-guest --host 10.0.0.2 --port 5501 --bytes 262144 --timeout 60" \
        "tcp-send --scenario 5 --label private-dom0-to-guest --host 10.1.0.2 --port 5502 --bytes 262144 --timeout 60"
    gcall 120 g_s5_results
}

# g_reconnect SCENARIO: the frontend reconnect of a guest reboot, domain kept: netfront unbound
# from vif-0 and vif-1 through sysfs and bound again; the new eth0, eth1 addressed again.
g_reconnect() {
    local _drv=/sys/bus/xen/drivers/vif _d _rc _if _i
    for _d in 0 1; do
        # netfront's remove waits for netback (Closing, then Closed): bounded here.
        timeout 30 sh -c "echo vif-$_d >$_drv/unbind"
        _rc=$?
        xo_emit "$1" unbind device "vif-$_d" rc "$_rc" \
            xenbus_state "$(cat /sys/bus/xen/devices/vif-$_d/state 2>/dev/null)" \
            driver "$(basename "$(readlink /sys/bus/xen/devices/vif-$_d/driver 2>/dev/null)" 2>/dev/null)" \
            netdevs "$(ls /sys/class/net | tr '\n' ' ')"
    done
    for _d in 0 1; do
        timeout 30 sh -c "echo vif-$_d >$_drv/bind"
        _rc=$?
        _if=""
        for _i in $(seq 1 150); do
            _if=$(ls "/sys/bus/xen/devices/vif-$_d/net" 2>/dev/null)
            [ -n "$_if" ] && [ "$(cat /sys/bus/xen/devices/vif-$_d/state)" = Connected ] && break
            sleep 0.2
        done
        xo_emit "$1" bind device "vif-$_d" rc "$_rc" iface "$_if" \
            ifindex "$(cat /sys/class/net/$_if/ifindex 2>/dev/null)" \
            xenbus_state "$(cat /sys/bus/xen/devices/vif-$_d/state 2>/dev/null)"
    done
    # New netdevs: the addresses went with the old ones.
    $IP addr add 10.0.0.2/24 dev eth0; $IP link set eth0 up
    $IP addr add 10.1.0.2/24 dev eth1; $IP link set eth1 up
}

g_s5_reconnect() {
    g_reconnect 5
    for _i in eth0 eth1; do
        _dev=$(basename "$(readlink /sys/class/net/$_i/device)")
        xo_emit 5 netfront iface "$_i" device "$_dev" \
            xenbus_state "$(cat /sys/bus/xen/devices/$_dev/state 2>/dev/null)" \
            nodename "$(cat /sys/bus/xen/devices/$_dev/nodename 2>/dev/null)" \
            operstate "$(cat /sys/class/net/$_i/operstate)" \
            ifindex "$(cat /sys/class/net/$_i/ifindex)"
    done
    xo_ethtool_save /tmp/s5-eth-before-agents eth0 eth1
    xo_tc_save /tmp/s5-tc-before-agents eth0 eth1
}

g_s5_agent() {
    s4_guest_once guest-agent 5
    xo_ethtool_save /tmp/s5-eth-after-agents eth0 eth1
    xo_tc_save /tmp/s5-tc-after-agents eth0 eth1
    rm -f /tmp/s5-r*
    # shellcheck disable=SC2086
    $XO_PY recv --scenario 5 --timeout 60 $S5_TO_GUEST >/dev/null 2>&1 &
    $XO_PY batch \
        "ethtool --scenario 5 --label before-agents --saved /tmp/s5-eth-before-agents eth0 eth1" \
        "ethtool --scenario 5 --label after-agents --saved /tmp/s5-eth-after-agents eth0 eth1" \
        "tc --scenario 5 --label before-agents --saved /tmp/s5-tc-before-agents eth0 eth1" \
        "tc --scenario 5 --label after-agents --saved /tmp/s5-tc-after-agents eth0 eth1"
    xo_wait_listening 30 /tmp/s5-r5501.json /tmp/s5-r5502.json
}

g_s5_results() {
    xo_results 5 60 tcp-recv:public-dom0-to-guest:/tmp/s5-r5501.json \
        tcp-recv:private-dom0-to-guest:/tmp/s5-r5502.json
    for _net in public:10.0.0.1 private:10.1.0.1; do
        ping -c 2 -i 0.3 -W 2 "${_net#*:}" >/tmp/ping.out 2>&1
        xo_emit 5 ping label "${_net%%:*}" from guest to "${_net#*:}" rc "$?" \
            summary "$(grep -E 'packets transmitted' /tmp/ping.out)"
    done
}
