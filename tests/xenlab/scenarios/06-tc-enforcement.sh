# Scenario 6 — tc enforcement on the real drivers (issue 15, part 1; docs/toggles.md "Proving it
# in the Xen lab"). Scenarios 4 and 5 (agents --once, tc on: the CLI's default) left dom0's
# public vif with xenoffload's ingress filters (csum, IPv4 and IPv6) beside the administrator's
# filter at priority 1000, and the guest's new eth0 with xenoffload's egress filter and
# gso_max_segs 1. Here the agents start as daemons (they stay up through scenarios 7 and 8),
# dom0's with the lab's policy installed as /etc/xenoffload/policy.toml (its default path).
# Guest-sent traffic (xo_gtx_round, scenario 3) is captured in dom0 after the vif's ingress
# (xo-capn, xenbr0) and in the guest at eth0's egress. Steps:
#   C  both ends enforce "from-guest: compute" with tc: zero incorrect checksums anywhere
#      (scenario 3's "guest-tx" round is the same traffic with nothing of xenoffload: incorrect);
#   E  the daemons start and take over: a fresh agent finds its rules in place and sends no tc
#      request (same filters, counters only grow);
#   D  dom0 allows blank checksums from the guest on the public vif (`set DOMID/0 --rx on`):
#      xenoffload's filters and gso_max_segs 1 go, blank checksums flow again, the
#      administrator's filter (and its clsact) stay;
#   B  the guest agent stopped (a guest that ignores the policy), dom0's override cleared:
#      dom0's ingress filters complete what the guest sends blank, except TSO packets;
#   H  the guest kernel loses act_csum (rmmod; there is no modprobe), the guest agent starts:
#      it reports "unenforced ... act_csum unavailable" and leaves no clsact, gso_max_segs as
#      it was;
#   R  act_csum back, the guest agent started again: as in C.
# Needs the xenoffload CLI (as scenario 4).

S6_DIR=/tmp/s6
S6_BACKEND_LOG=/run/xo/backend.log

# s6_save LABEL: dom0's devices and both ends' status and result of both vifs, now.
s6_save() {
    xo_ethtool_save "$S6_DIR/$1" "vif$GDOM.0" "vif$GDOM.1"
    xo_tc_save "$S6_DIR/$1" "vif$GDOM.0" "vif$GDOM.1"
    xo_xs_values "$S6_DIR/$1/xs" \
        $(for _d in 0 1; do for _k in xenoffload-csum-status xenoffload-csum-result; do
            echo "/local/domain/0/backend/vif/$GDOM/$_d/$_k /local/domain/$GDOM/device/vif/$_d/$_k"
          done; done)
    echo "$1" >>"$S6_DIR/labels"
}

g_s6_save() {
    mkdir -p "$S6_DIR"
    xo_ethtool_save "$S6_DIR/$1" eth0 eth1
    xo_tc_save "$S6_DIR/$1" eth0 eth1
    echo "$1" >>"$S6_DIR/labels"
}

# s6_items IFACE0 IFACE1: xo.py batch items reporting every saved moment (and enforce logs).
s6_items() {
    local _l _f
    while read -r _l; do
        echo "ethtool --scenario 6 --label $_l --saved $S6_DIR/$_l $1 $2"
        echo "tc --scenario 6 --label $_l --saved $S6_DIR/$_l $1 $2"
        [ -e "$S6_DIR/$_l/xs" ] && echo "xsvalues --scenario 6 --label $_l --saved $S6_DIR/$_l/xs"
    done <"$S6_DIR/labels"
    for _f in "$S6_DIR"/*.enforce; do
        [ -e "$_f" ] && echo "emit --scenario 6 --file lines=$_f enforce-log label=$(basename "$_f" .enforce)"
    done
}

s6_dom0() {
    xo_agent_presence 6 || return 0
    rm -rf "$S6_DIR"; mkdir -p "$S6_DIR" /run/xo
    # C: as scenarios 4 and 5 left it.
    s6_save C; gcall 30 g_s6_save C
    xo_gtx_round 6 C
    # E: the daemons start. From here dom0's policy is the file at the default path
    # (/etc/xenoffload/policy.toml), read by the agent and by the hotplug hook alike.
    mkdir -p /etc/xenoffload
    cp "$XO_CONF/dom0.toml" /etc/xenoffload/policy.toml
    xo_backend_daemon_start
    gcall 90 g_s6_guest_daemon E
    for _i in $(seq 1 150); do
        grep -q "enforce INFO vif$GDOM.1 " $S6_BACKEND_LOG && break
        sleep 0.2
    done
    grep 'xenoffload.enforce INFO vif' $S6_BACKEND_LOG >"$S6_DIR/backend-E.enforce"
    s6_save E
    # D: blank checksums from the guest allowed on the public vif.
    xo_run 6 set-rx-on 60 $XO_CLI set --xenstore /run/xenstored/socket "$GDOM/0" --rx on
    xo_converged 6 D 30 $(xo_vif_results "$GDOM" 0 none ipv4+ipv6 ok ok)
    s6_save D; gcall 30 g_s6_save D
    xo_gtx_round 6 D
    # B: the guest agent stopped; dom0 computes again.
    gcall 30 g_s6_guest_stop
    xo_run 6 set-clear 60 $XO_CLI set --xenstore /run/xenstored/socket "$GDOM/0" --clear
    xo_converged 6 B 30 "/local/domain/0/backend/vif/$GDOM/0/xenoffload-csum-status=$(echo \
        "$XO_ST_BACK_COMPUTE" | tr ' ' '~')"
    s6_save B; gcall 30 g_s6_save B
    xo_gtx_round 6 B
    # H: no act_csum in the guest kernel, the guest agent starts; R: act_csum back.
    gcall 120 g_s6_no_act_csum
    xo_converged 6 H 30 "/local/domain/$GDOM/device/vif/0/xenoffload-csum-status=$(echo \
        "$XO_ST_FRONT_NO_ACT_CSUM" | tr ' ' '~')"
    s6_save H
    gcall 120 g_s6_act_csum_back
    xo_converged 6 R 30 $(xo_vif_results "$GDOM" 0 none none "$XO_ST_BACK_COMPUTE" \
        "$XO_ST_FRONT_COMPUTE")
    s6_save R
    s6_items "vif$GDOM.0" "vif$GDOM.1" >/tmp/s6-items
    set --
    while IFS= read -r _line; do set -- "$@" "$_line"; done </tmp/s6-items
    $XO_PY batch "$@"
    gcall 60 g_s6_report
}

# g_s6_guest_daemon LABEL: start the guest agent daemon; once it enforced on both devices,
# keep its enforce lines (LABEL.enforce) and save the devices' state as LABEL.
g_s6_guest_daemon() {
    local _i _n
    _n=$(grep -c 'enforce INFO eth1 ' /run/xo-guest-agent.log 2>/dev/null)
    xo_guest_agent_start "scenario 6 $1"
    for _i in $(seq 1 150); do
        [ "$(grep -c 'enforce INFO eth1 ' /run/xo-guest-agent.log)" -gt "${_n:-0}" ] && break
        sleep 0.2
    done
    mkdir -p "$S6_DIR"
    grep 'xenoffload.enforce INFO eth' /run/xo-guest-agent.log | tail -n 2 >"$S6_DIR/guest-$1.enforce"
    g_s6_save "$1"
}

g_s6_guest_stop() {
    xo_kill_wait "$(cat /run/xo-guest-agent.pid)" TERM 10
    xo_emit 6 guest-agent-stopped running "$(ps | grep -c '[x]enoffload -v guest-agent')"
}

g_s6_no_act_csum() {
    rmmod act_csum
    xo_emit 6 rmmod module act_csum rc "$?" loaded "$(grep -c '^act_csum ' /proc/modules)"
    g_s6_guest_daemon H
}

g_s6_act_csum_back() {
    insmod /lib/modules/act_csum.ko
    xo_emit 6 insmod module act_csum rc "$?" loaded "$(grep -c '^act_csum ' /proc/modules)"
    g_s6_guest_stop
    g_s6_guest_daemon R
}

g_s6_report() {
    s6_items eth0 eth1 >/tmp/s6-items
    set --
    while IFS= read -r _line; do set -- "$@" "$_line"; done </tmp/s6-items
    $XO_PY batch "$@"
}
