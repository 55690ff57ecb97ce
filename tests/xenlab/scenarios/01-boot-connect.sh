# Scenario 1 — boot and connect: both vifs Connected by the stock Linux drivers (netback/netfront),
# hotplug done by the stock vif-bridge script, each vif on its bridge; XenStore dirs of both ends;
# ethtool -k of vifD.0/vifD.1 and the guest's eth0/eth1; python3 + xenoffload import in both domains.
# The xo.py facts of each domain come from one Python start (xo.py batch).

s1_dom0() {
    set --
    for _d in 0 1; do
        _be=/local/domain/0/backend/vif/$GDOM/$_d
        _fe=/local/domain/$GDOM/device/vif/$_d
        _master=$(basename "$(readlink /sys/class/net/vif$GDOM.$_d/master 2>/dev/null)" 2>/dev/null)
        xo_emit 1 vif devid "$_d" vif "vif$GDOM.$_d" \
            backend_state "$(xenstore-read $_be/state 2>/dev/null)" \
            frontend_state "$(xenstore-read $_fe/state 2>/dev/null)" \
            hotplug_status "$(xenstore-read $_be/hotplug-status 2>/dev/null)" \
            bridge_key "$(xenstore-read $_be/bridge 2>/dev/null)" \
            bridge_actual "$_master" \
            operstate "$(cat /sys/class/net/vif$GDOM.$_d/operstate 2>/dev/null)"
        set -- "$@" "xsdir --scenario 1 --label backend-$_d $_be" \
            "xsdir --scenario 1 --label frontend-$_d $_fe"
    done
    $XO_PY batch "$@" "ethtool --scenario 1 --label stock vif$GDOM.0 vif$GDOM.1" \
        "pyinfo --scenario 1"
    xo_py_timing 1
    xo_emit 1 hotplug script "$(xenstore-read /local/domain/0/backend/vif/$GDOM/0/script 2>/dev/null)" \
        log_lines "$(wc -l < /var/log/xen/xen-hotplug.log 2>/dev/null || echo 0)"
    gcall 120 g_s1
}

g_s1() {
    for _i in eth0 eth1; do
        _dev=$(basename "$(readlink /sys/class/net/$_i/device)")
        xo_emit 1 netfront iface "$_i" device "$_dev" \
            xenbus_state "$(cat /sys/bus/xen/devices/$_dev/state 2>/dev/null)" \
            nodename "$(cat /sys/bus/xen/devices/$_dev/nodename 2>/dev/null)" \
            operstate "$(cat /sys/class/net/$_i/operstate)"
    done
    $XO_PY batch "ethtool --scenario 1 --label stock eth0 eth1" "pyinfo --scenario 1"
    xo_py_timing 1
}
