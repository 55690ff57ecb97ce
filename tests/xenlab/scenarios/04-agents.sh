# Scenario 4 — the xenoffload agents on real drivers. Runs only when the image's xenoffload has
# its CLI (xenoffload/__main__.py and cli.py, see xo_cli_present); otherwise reports
# "agent": "absent".
# dom0: backend-agent --once against the real C xenstored with configs/dom0.toml (xenpriv0 may
# carry blank checksums, xenbr0 may not); guest: guest-agent --once over /dev/xen/xenbus; then
# `show --json`, and `set DOMID/0 --tx on|off` each followed by backend-agent --once (an override
# is applied by an agent) and ethtool -k of the real vif: the effect is checked on the kernel
# device, not on the CLI's word. Ends with `set --clear` and the agent restoring the policy.
# tc is on (the CLI's default): the agents compute with tc what ethtool cannot switch (dom0:
# the public vif's ingress, from-guest; guest: eth0's egress, IPv4, with gso_max_segs 1). An
# administrator's tc configuration is there before the agents run (a clsact on the public vif
# with a filter at priority 1000): it must be left as it is (docs/toggles.md, "Proving it").

S4_CONF=$XO_LIB/scenarios/configs
S4_XO="/usr/bin/python3 -m xenoffload"

s4_run() {
    # s4_run LABEL SECONDS CMD...: run a command, emit rc and the tail of its output.
    xo_run 4 "$@"
}

s4_backend_once() {
    # s4_backend_once LABEL [SCENARIO]: one pass of the backend agent (companion mode, netlink).
    xo_run "${2:-4}" "$1" 120 $S4_XO backend-agent --mode companion \
        --xenstore /run/xenstored/socket --config "$S4_CONF/dom0.toml" --toggles netlink --once \
        --timeout 90
}

s4_guest_once() {
    # s4_guest_once LABEL [SCENARIO]: one pass of the guest agent over /dev/xen/xenbus.
    xo_run "${2:-4}" "$1" 150 $S4_XO guest-agent --mode companion --xenstore /dev/xen/xenbus \
        --config "$S4_CONF/guest.toml" --toggles netlink --once --timeout 90
}

s4_dom0() {
    if ! xo_cli_present; then
        xo_emit 4 agent agent absent detail "$(tail -n 1 /tmp/xo-cli-help.txt)"
        gcall 90 g_s4_detect
        return 0
    fi
    xo_emit 4 agent agent present
    # The administrator's own tc configuration on the public vif (not xenoffload's).
    $TC qdisc add dev "vif$GDOM.0" clsact
    $TC filter add dev "vif$GDOM.0" ingress pref 1000 protocol ip u32 match u32 0 0 action pass
    xo_emit 4 foreign-tc rc "$?" iface "vif$GDOM.0"
    s4_backend_once backend-agent
    gcall 180 g_s4_agent
    # Kernel features are recorded at each moment (ethtool, no Python); one xo.py batch at the
    # end reports them with the XenStore directories and `show --json`.
    xo_ethtool_save /tmp/s4-eth-after-agents "vif$GDOM.0" "vif$GDOM.1"
    xo_tc_save /tmp/s4-tc-after-agents "vif$GDOM.0" "vif$GDOM.1"
    set -- "tc --scenario 4 --label after-agents --saved /tmp/s4-tc-after-agents vif$GDOM.0 vif$GDOM.1"
    for _d in 0 1; do
        set -- "$@" "xsdir --scenario 4 --label backend-$_d /local/domain/0/backend/vif/$GDOM/$_d" \
            "xsdir --scenario 4 --label frontend-$_d /local/domain/$GDOM/device/vif/$_d"
    done
    timeout 60 $S4_XO show --xenstore /run/xenstored/socket --json >/tmp/s4-show 2>&1
    set -- "$@" "emit --scenario 4 --file json=/tmp/s4-show show rc=$?" \
        "ethtool --scenario 4 --label after-agents --saved /tmp/s4-eth-after-agents vif$GDOM.0 vif$GDOM.1"
    for _v in on off; do
        s4_run "set-tx-$_v" 60 $S4_XO set --xenstore /run/xenstored/socket "$GDOM/0" --tx "$_v"
        s4_backend_once "backend-agent-after-set-tx-$_v"
        xo_ethtool_save "/tmp/s4-eth-after-set-tx-$_v" "vif$GDOM.0"
        set -- "$@" "ethtool --scenario 4 --label after-set-tx-$_v --saved /tmp/s4-eth-after-set-tx-$_v vif$GDOM.0"
    done
    s4_run set-clear 60 $S4_XO set --xenstore /run/xenstored/socket "$GDOM/0" --clear
    s4_backend_once backend-agent-after-clear
    xo_ethtool_save /tmp/s4-eth-after-clear "vif$GDOM.0"
    $XO_PY batch "$@" \
        "ethtool --scenario 4 --label after-clear --saved /tmp/s4-eth-after-clear vif$GDOM.0"
}

g_s4_detect() {
    if xo_cli_present; then
        xo_emit 4 agent agent present
    else
        xo_emit 4 agent agent absent detail "$(tail -n 1 /tmp/xo-cli-help.txt)"
    fi
}

g_s4_agent() {
    g_s4_detect
    xo_cli_present || return 0
    s4_guest_once guest-agent
    xo_tc_save /tmp/s4-tc-after-agents eth0 eth1
    $XO_PY batch "ethtool --scenario 4 --label after-agents eth0 eth1" \
        "tc --scenario 4 --label after-agents --saved /tmp/s4-tc-after-agents eth0 eth1"
}
