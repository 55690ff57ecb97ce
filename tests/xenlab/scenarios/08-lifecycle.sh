# Scenario 8 — the toolstack's life cycle with the agents running (issue 15, part 2): scenario
# 7's daemons stay up, a probe (probes.sh) follows every step.
#   a attach-agent   `xl network-attach` of a third vif (devid 2) on xenpriv0 with
#                    script=vif-bridge-xenoffload, the wrapper `xenoffload units` renders: libxl
#                    runs stock vif-bridge and `xenoffload hotplug online`, which leaves the vif
#                    to the running backend agent; the agents negotiate it (allowed: xenpriv0);
#   b detach-agent   `xl network-detach`: hotplug offline; nothing of xenoffload left running
#                    (no hook process, only the agent's locks held), the vif forgotten;
#   c attach-hook    the same with the backend agent stopped and vifname=xo-third: now the hook
#                    itself negotiates and applies to the device by that name; the agent,
#                    started again, takes the vif over (found by vifname); then detached again;
#   d save-restore   overrides on the private vif at both ends (dom0 `set DOMID/1 --tx off`,
#                    guest `set --local 1 --tx off`), then `xl save` + `xl restore`: the guest
#                    resumes as a new domain (new domid); netfront reconnects; the guest agent
#                    follows its domain; both overrides hold (dom0's is keyed by the VM's UUID);
#   e create         `xl shutdown` (the guest's poweroff stops its agent) and `xl create` of
#                    configs xenlab-guest-xo.cfg: both vifs hotplugged by the wrapper, the
#                    private one named xo-priv (vifname=), the guest agent started at boot:
#                    negotiation from scratch under the policy file still in force.

S8_HOTPLUG_LOG=/var/log/xen/xenoffload-hotplug.log
S8_THIRD="bridge=xenpriv0 script=vif-bridge-xenoffload mac=00:16:3e:58:4f:02"

# s8_xl LABEL CMD...: run an xl command (bounded), emit its status, time and output.
s8_xl() {
    local _l=$1 _t0 _rc
    shift
    _t0=$(xo_now)
    timeout 120 "$@" >/tmp/s8-xl.out 2>&1
    _rc=$?
    xo_emit 8 xl label "$_l" rc "$_rc" secs "$(awk "BEGIN{print $(xo_now) - $_t0}")" \
        output "$(tail -c 600 /tmp/s8-xl.out | tr '\n' '|')"
    sed "s/^/@@XL   [xl $_l] /" /tmp/s8-xl.out | tail -20
    return $_rc
}

# s8_vif_state LABEL DEVID DEVICE: the third vif as dom0 sees it now (XenStore, the device, the
# bridge, hotplug), and whether any hotplug hook is still running.
s8_vif_state() {
    local _be=/local/domain/0/backend/vif/$GDOM/$2 _fe=/local/domain/$GDOM/device/vif/$2
    xo_emit 8 vif-state label "$1" devid "$2" device "$3" \
        backend_dir "$(xenstore-exists "$_be" && echo present || echo absent)" \
        frontend_dir "$(xenstore-exists "$_fe" && echo present || echo absent)" \
        backend_state "$(xenstore-read "$_be/state" 2>/dev/null)" \
        frontend_state "$(xenstore-read "$_fe/state" 2>/dev/null)" \
        hotplug_status "$(xenstore-read "$_be/hotplug-status" 2>/dev/null)" \
        script "$(xenstore-read "$_be/script" 2>/dev/null)" \
        vifname "$(xenstore-read "$_be/vifname" 2>/dev/null)" \
        netdev "$([ -e "/sys/class/net/$3" ] && echo present || echo absent)" \
        bridge "$(basename "$(readlink "/sys/class/net/$3/master" 2>/dev/null)" 2>/dev/null)" \
        hooks "$(ps | grep -c '[x]enoffload -v hotplug')" \
        agents "$(ps | grep -c '[x]enoffload -v backend-agent')"
}

s8_dom0() {
    xo_agent_presence 8 || return 0
    mkdir -p /run/xo-units
    xo_run 8 units 60 $XO_CLI units --output /run/xo-units
    cp /run/xo-units/vif-bridge-xenoffload /etc/xen/scripts/vif-bridge-xenoffload
    chmod 755 /etc/xen/scripts/vif-bridge-xenoffload
    xo_emit 8 wrapper path /etc/xen/scripts/vif-bridge-xenoffload \
        command "$(grep -- ' hotplug ' /etc/xen/scripts/vif-bridge-xenoffload | tr -s ' ')"
    $IP addr add 10.2.0.1/24 dev xenpriv0
    : >$S8_HOTPLUG_LOG
    xo_probe_dom0_start 8a
    gcall 60 g_probe_start 8a

    # a. attach, the backend agent running.
    s8_xl attach-agent xl network-attach "$XO_GNAME" $S8_THIRD
    xo_converged 8 attach-agent 60 $(xo_vif_results "$GDOM" 2 ipv4+ipv6 ipv4+ipv6 ok ok)
    gcall 90 g_s8_third attach-agent
    s8_vif_state attach-agent 2 "vif$GDOM.2"
    xo_ethtool_save /tmp/s8-eth-attach-agent "vif$GDOM.2"
    xo_tc_save /tmp/s8-eth-attach-agent "vif$GDOM.2"
    xo_probe_step 8 6 attach-agent "vif$GDOM.0" "vif$GDOM.1"

    # b. detach, the backend agent running.
    s8_xl detach-agent xl network-detach "$XO_GNAME" 2
    xo_converged 8 detach-agent 30 "/local/domain/$GDOM/device/vif/2/state=" \
        "/local/domain/0/backend/vif/$GDOM/2/state="
    sleep 1  # let a hook still starting show up in ps (none should); nothing is decided here
    s8_vif_state detach-agent 2 "vif$GDOM.2"
    $XO_PY locks --scenario 8 --label detach-agent /run/xenoffload
    xo_probe_step 8 7 detach-agent "vif$GDOM.0" "vif$GDOM.1"

    # c. the hook alone (backend agent stopped), vifname=xo-third; then the agent again.
    xo_kill_wait "$(cat /run/xo/backend.pid)" TERM 15
    xo_emit 8 backend-agent-stopped agents "$(ps | grep -c '[x]enoffload -v backend-agent')"
    s8_xl attach-hook xl network-attach "$XO_GNAME" $S8_THIRD vifname=xo-third
    xo_converged 8 attach-hook 60 $(xo_vif_results "$GDOM" 2 ipv4+ipv6 ipv4+ipv6 ok ok)
    for _i in $(seq 1 100); do  # the hook's child applies, logs and exits
        grep -q "vif $GDOM/2 negotiated" $S8_HOTPLUG_LOG && break
        sleep 0.2
    done
    s8_vif_state attach-hook 2 xo-third
    xo_ethtool_save /tmp/s8-eth-attach-hook xo-third
    xo_tc_save /tmp/s8-eth-attach-hook xo-third
    gcall 90 g_s8_third attach-hook
    xo_backend_daemon_start
    for _i in $(seq 1 150); do
        [ "$(grep -c "domid=$GDOM devid=2 found.*vifname=xo-third" $S7_LOG)" -ge 1 ] && break
        sleep 0.2
    done
    xo_converged 8 agent-again 30 $(xo_vif_results "$GDOM" 2 ipv4+ipv6 ipv4+ipv6 ok ok) \
        $(xo_vif_results "$GDOM" 0 none none "$XO_ST_BACK_COMPUTE" "$XO_ST_FRONT_COMPUTE")
    s8_xl detach-hook xl network-detach "$XO_GNAME" 2
    xo_converged 8 detach-hook 30 "/local/domain/$GDOM/device/vif/2/state=" \
        "/local/domain/0/backend/vif/$GDOM/2/state="
    sleep 1
    s8_vif_state detach-hook 2 xo-third
    $XO_PY locks --scenario 8 --label detach-hook /run/xenoffload

    # d. overrides on the private vif at both ends, then xl save + xl restore.
    xo_run 8 set-private-tx-off 60 $XO_CLI set --xenstore /run/xenstored/socket "$GDOM/1" --tx off
    gcall 90 g_s8_local_override
    xo_converged 8 overrides 30 $(xo_vif_results "$GDOM" 1 none none "$XO_ST_BACK_COMPUTE" \
        "$XO_ST_FRONT_COMPUTE")
    xo_probe_step 8 8 before-save "vif$GDOM.0" "vif$GDOM.1"
    xo_xsdir_save /tmp/s8-policy-before /local/domain/0/xenoffload/policy
    mkdir -p /run/xo-save
    mount -t tmpfs -o size=320m xosave /run/xo-save
    _old=$GDOM
    s8_xl save xl save "$XO_GNAME" /run/xo-save/guest.save
    s8_xl restore xl restore /run/xo-save/guest.save
    rm -f /run/xo-save/guest.save
    umount /run/xo-save
    xo_guest_follow 60 "$_old"
    xo_emit 8 restored old_domid "$_old" domid "$GDOM" runner "$(xenstore-read "$GDATA/xo/ready" 2>/dev/null)"
    # Both ends of the new domain's vifs: the public one under the policy file, the private
    # one under the overrides, dom0's (keyed by the VM's UUID) and the guest's (carried by its
    # agent to the new home).
    xo_converged 8 restore 30 $(xo_vif_results "$GDOM" 0 none none "$XO_ST_BACK_COMPUTE" \
        "$XO_ST_FRONT_COMPUTE") $(xo_vif_results "$GDOM" 1 none none "$XO_ST_BACK_COMPUTE" \
        "$XO_ST_FRONT_COMPUTE")
    xo_probe_step 8 9 after-restore "vif$GDOM.0" "vif$GDOM.1"
    xo_xsdir_save /tmp/s8-policy-after /local/domain/0/xenoffload/policy
    xo_xsdir_save /tmp/s8-guest-policy-after "/local/domain/$GDOM/data/xenoffload/policy"
    gcall 90 g_s8_before_shutdown
    xo_probe_report 8 8a \
        "xsdir --scenario 8 --label policy-before --saved /tmp/s8-policy-before /local/domain/0/xenoffload/policy" \
        "xsdir --scenario 8 --label policy-after-restore --saved /tmp/s8-policy-after /local/domain/0/xenoffload/policy" \
        "xsdir --scenario 8 --label guest-policy-after-restore --saved /tmp/s8-guest-policy-after /local/domain/$GDOM/data/xenoffload/policy" \
        "ethtool --scenario 8 --label attach-agent --saved /tmp/s8-eth-attach-agent vif$_old.2" \
        "tc --scenario 8 --label attach-agent --saved /tmp/s8-eth-attach-agent vif$_old.2" \
        "ethtool --scenario 8 --label attach-hook --saved /tmp/s8-eth-attach-hook xo-third" \
        "tc --scenario 8 --label attach-hook --saved /tmp/s8-eth-attach-hook xo-third" \
        "logtime --scenario 8 --label hotplug --file $S8_HOTPLUG_LOG hotplug" \
        "logtime --scenario 8 --label backend-third --file $S7_LOG devid=2"

    # e. shutdown, then create from the xenoffload config; the guest agent starts at boot.
    xenstore-write /xenlab/guest-agent 1
    xenstore-chmod /xenlab r0
    xenstore-chmod /xenlab/guest-agent r0
    _old=$GDOM
    s8_xl shutdown xl shutdown -w "$XO_GNAME"
    for _i in $(seq 1 100); do  # the domain is destroyed after it shut down
        xl domid "$XO_GNAME" >/dev/null 2>&1 || break
        sleep 0.2
    done
    s8_xl create xl create /etc/xen/xenlab-guest-xo.cfg
    xo_guest_follow 120 "$_old"
    xo_emit 8 created old_domid "$_old" domid "$GDOM" runner "$(xenstore-read "$GDATA/xo/ready" 2>/dev/null)"
    gcall 90 g_s8_created
    xo_probe_dom0_start 8b
    xo_converged 8 create 60 $(xo_vif_results "$GDOM" 0 none none "$XO_ST_BACK_COMPUTE" \
        "$XO_ST_FRONT_COMPUTE") $(xo_vif_results "$GDOM" 1 ipv4+ipv6 ipv4+ipv6 ok ok)
    s8_vif_state create 1 xo-priv
    xo_probe_step 8 10 create "vif$GDOM.0" xo-priv
    xo_xsdir_save /tmp/s8-policy-created /local/domain/0/xenoffload/policy
    timeout 60 $XO_CLI show --xenstore /run/xenstored/socket --json >/tmp/s8-show 2>&1
    xo_probe_report 8 8b \
        "emit --scenario 8 --file json=/tmp/s8-show show rc=$? where=dom0" \
        "xsdir --scenario 8 --label policy-after-create --saved /tmp/s8-policy-created /local/domain/0/xenoffload/policy" \
        "logtime --scenario 8 --label hotplug-create --file $S8_HOTPLUG_LOG hotplug" \
        "logtime --scenario 8 --label backend --file $S7_LOG domid=$GDOM vif$GDOM.0 xo-priv"
    gcall 120 g_s8_report
    # The agents' and the hook's whole logs, for whoever reads the console.
    sed 's/^/@@XL backend-agent: /' /run/xo/backend.log
    sed 's/^/@@XL hotplug: /' $S8_HOTPLUG_LOG
}

g_s8_third() {
    local _if
    _if=$(ls /sys/bus/xen/devices/vif-2/net 2>/dev/null)
    xo_emit 8 guest-third label "$1" iface "$_if" \
        xenbus_state "$(cat /sys/bus/xen/devices/vif-2/state 2>/dev/null)"
    [ -n "$_if" ] || return 1
    $IP addr add 10.2.0.2/24 dev "$_if"; $IP link set "$_if" up
    ping -c 2 -W 2 10.2.0.1 >/tmp/ping.out 2>&1
    xo_emit 8 ping label "$1" from guest to 10.2.0.1 via "$_if" rc "$?"
    $XO_PY ethtool --scenario 8 --label "$1" "$_if"
}

g_s8_local_override() {
    xo_run 8 guest-set-private-tx-off 60 $XO_CLI set --local 1 --tx off
}

g_s8_before_shutdown() {
    xo_xsdir_save /tmp/s8-guest-policy "/local/domain/$DOMID/data/xenoffload/policy"
    g_probe_report 8 8a \
        "xsdir --scenario 8 --label guest-policy-restored --saved /tmp/s8-guest-policy /local/domain/$DOMID/data/xenoffload/policy" \
        "logtime --scenario 8 --label guest-restored --file /run/xo-guest-agent.log domid= devid= 'this domain is now'"
}

g_s8_created() {
    for _i in $(seq 1 150); do
        [ "$(grep -c 'found' /run/xo-guest-agent.log 2>/dev/null)" -ge 2 ] && break
        sleep 0.2
    done
    xo_emit 8 guest-agent-at-boot running "$(ps | grep -c '[x]enoffload -v guest-agent')" \
        found "$(grep -c 'found' /run/xo-guest-agent.log 2>/dev/null)"
    g_probe_start 8b
}

g_s8_report() {
    timeout 60 $XO_CLI show --json >/tmp/s8-show 2>&1
    g_probe_report 8 8b "emit --scenario 8 --file json=/tmp/s8-show show rc=$? where=guest-created"
    sed 's/^/@@XL guest-agent: /' /run/xo-guest-agent.log
}
