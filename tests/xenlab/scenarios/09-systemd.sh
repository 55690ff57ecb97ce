# Scenario 9 — xenoffload's backend unit under a real systemd (PID 1). Runs only in the lab's
# systemd boot (`xenlab.py run --init systemd`; dom0-init's "all" leaves it out): dom0's
# /init is then xenlab.service, and xenoffload is not in the image but installed here as the
# docs tell a user (docs/agents.md, examples/systemd/README.md):
#     python3 -m venv /opt/xenoffload
#     /opt/xenoffload/bin/pip install --no-index --find-links /root/wheels xenoffload
#         (the wheel built from the working tree, attrs, pyxs)
#     /opt/xenoffload/bin/xenoffload units --output /etc/systemd/system
#     systemctl enable --now xenoffload-backend.service
# The guest agent runs as in scenarios 6-8 (started by the guest's runner, not by systemd).
# From there on the backend agent is driven through systemctl only. Steps (each followed by a
# probe, probes.sh: packets both ways on both vifs, ethtool -k and tc at both ends, both ends'
# published result and status; and `systemctl show` of the unit):
#   0 start          enable --now returned once the agent sent READY=1 (Type=notify);
#                    negotiated under the unit's sandbox: the public vif computed with tc at
#                    both ends, the private one blank both ways;
#   1 reload-allow   the policy file allows the public bridge too, `systemctl reload` (SIGHUP):
#                    same main process, blank allowed on vif 0;
#   2 reload-revoke  the file back, `systemctl reload`: revoked;
#   3 killed         `kill -9` of the main process: systemd restarts it (Restart=on-failure,
#                    NRestarts 1), the new agent takes the vifs over as negotiated;
#   4 stopped        the file allows the public bridge again, `systemctl reload` and at once
#                    `systemctl stop` (the reload's negotiation in flight): a clean stop (exit 0,
#                    Result=success); both ends and the device agree with what was published;
#   5 started        `systemctl start`: the file's policy (allowed) at both ends;
#   6 xenbus         a drop-in sets XENSTORED_PATH=/dev/xen/xenbus (the backend agent of a
#                    driver domain reaches XenStore through the xenbus device), daemon-reload,
#                    restart: the sandboxed agent holds the device open and revokes vif 0 on a
#                    reload (the file back to dom0.toml);
# then the unit's journal (`journalctl -u`, the agent's own lines and systemd's about it).

S9_UNIT=xenoffload-backend.service
S9_DIR=/tmp/s9
S9_POLICY=/etc/xenoffload/policy.toml

# s9_show LABEL: the unit's state as systemd reports it (systemctl show), as a fact.
s9_show() {
    local _l=$1 _k _v
    systemctl show -p ActiveState,SubState,MainPID,NRestarts,StatusText,Result,ExecMainCode \
        -p ExecMainStatus,Type,NotifyAccess "$S9_UNIT" >"$S9_DIR/show-$_l" 2>&1
    set -- label "$_l"
    while IFS='=' read -r _k _v; do
        [ -n "$_k" ] && set -- "$@" "$_k" "$_v"
    done <"$S9_DIR/show-$_l"
    xo_emit 9 unit-state "$@" uptime "$(xo_now)"
}

# s9_ctl LABEL SECONDS ARGS...: `systemctl ARGS` (bounded), its rc, output and duration.
s9_ctl() {
    local _l=$1 _t=$2 _t0 _rc
    shift 2
    _t0=$(xo_now)
    timeout "$_t" systemctl "$@" >"$S9_DIR/ctl-$_l" 2>&1
    _rc=$?
    xo_emit 9 systemctl label "$_l" command "$*" rc "$_rc" \
        secs "$(awk "BEGIN{print $(xo_now) - $_t0}")" output "$(tail -c 800 "$S9_DIR/ctl-$_l" | tr '\n' '|')"
    sed "s/^/@@XL   [systemctl $_l] /" "$S9_DIR/ctl-$_l"
    return $_rc
}

s9_mainpid() { systemctl show -p MainPID --value "$S9_UNIT"; }

# s9_sandbox LABEL: what the kernel says about the unit's main process: capabilities, no new
# privileges, seccomp, its own mount namespace, what it holds open (XenStore, netlink).
s9_sandbox() {
    local _p _st
    _p=$(s9_mainpid)
    _st=/proc/$_p/status
    xo_emit 9 sandbox label "$1" pid "$_p" \
        cap_eff "$(sed -n 's/^CapEff:[[:space:]]*//p' "$_st")" \
        cap_bnd "$(sed -n 's/^CapBnd:[[:space:]]*//p' "$_st")" \
        no_new_privs "$(sed -n 's/^NoNewPrivs:[[:space:]]*//p' "$_st")" \
        seccomp "$(sed -n 's/^Seccomp:[[:space:]]*//p' "$_st")" \
        own_mnt_ns "$([ "$(readlink /proc/"$_p"/ns/mnt)" != "$(readlink /proc/1/ns/mnt)" ] && echo 1 || echo 0)" \
        fds "$(ls -l /proc/"$_p"/fd 2>/dev/null | sed -n 's/.*-> //p' | sed 's/:\[[0-9]*\]//' | sort | uniq -c | tr -s ' ' | tr '\n' ';')" \
        xenbus_open "$(ls -l /proc/"$_p"/fd 2>/dev/null | grep -c '/dev/xen/xenbus')" \
        run_xenstored "$(grep -c 'xenstored' /proc/"$_p"/net/unix 2>/dev/null)"
}

# s9_wait_restart OLDPID SECONDS: wait (bounded) until the unit runs again under another pid.
s9_wait_restart() {
    local _end _p
    _end=$(($(cut -d. -f1 /proc/uptime) + $2))
    while [ "$(cut -d. -f1 /proc/uptime)" -lt "$_end" ]; do
        _p=$(s9_mainpid)
        if [ -n "$_p" ] && [ "$_p" != 0 ] && [ "$_p" != "$1" ] &&
            [ "$(systemctl show -p ActiveState --value "$S9_UNIT")" = active ]; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

s9_dom0() {
    if [ "$(cat /proc/1/comm)" != systemd ]; then
        xo_emit 9 init comm "$(cat /proc/1/comm)" error "systemd is not PID 1 (--init systemd)"
        return 1
    fi
    rm -rf "$S9_DIR"; mkdir -p "$S9_DIR" /etc/xenoffload
    xo_emit 9 init comm "$(cat /proc/1/comm)" version "$(systemctl --version | head -n 1)" \
        state "$(systemctl is-system-running 2>&1)" \
        journald "$(systemctl show -p ActiveState --value systemd-journald.service)"
    # Install as the README tells a user: a venv, its pip, units, enable --now.
    _t0=$(xo_now)
    xo_run 9 venv 600 /usr/bin/python3 -m venv /opt/xenoffload
    _t1=$(xo_now)
    xo_run 9 pip-install 600 /opt/xenoffload/bin/pip install --no-index \
        --find-links /root/wheels xenoffload
    _t2=$(xo_now)
    xo_run 9 units 120 /opt/xenoffload/bin/xenoffload units --output /etc/systemd/system
    xo_emit 9 install-times venv "$(awk "BEGIN{print $_t1 - $_t0}")" \
        pip "$(awk "BEGIN{print $_t2 - $_t1}")" units "$(awk "BEGIN{print $(xo_now) - $_t2}")"
    xo_emit 9 installed xenoffload "$(ls /opt/xenoffload/bin/xenoffload)" \
        exec_start "$(grep '^ExecStart=' /etc/systemd/system/$S9_UNIT)" \
        documentation "$(grep '^Documentation=' /etc/systemd/system/$S9_UNIT)" \
        doc_present "$([ -f /opt/xenoffload/share/doc/xenoffload/docs/agents.md ] && echo 1 || echo 0)"
    cp "$XO_CONF/dom0.toml" "$S9_POLICY"
    xo_cap_setup
    gcall 60 g_probe_start 9 || return 1
    xo_probe_dom0_start 9
    gcall 60 g_s9_guest_agent
    s9_ctl daemon-reload 60 daemon-reload
    s9_ctl enable-now 180 enable --now "$S9_UNIT"
    s9_show start
    systemctl status --no-pager -n 0 "$S9_UNIT" >"$S9_DIR/status-start" 2>&1
    xo_emit 9 status label start text "$(head -n 12 "$S9_DIR/status-start" | tr '\n' '|')"
    s9_sandbox start
    xo_converged 9 start 60 $(xo_vif_results "$GDOM" 0 none none "$XO_ST_BACK_COMPUTE" \
        "$XO_ST_FRONT_COMPUTE") $(xo_vif_results "$GDOM" 1 ipv4+ipv6 ipv4+ipv6 ok ok)
    xo_probe_step 9 0 start "vif$GDOM.0" "vif$GDOM.1"

    cat "$XO_CONF/dom0.toml" "$XO_CONF/allow-public.toml" >"$S9_POLICY"
    s9_ctl reload-allow 60 reload "$S9_UNIT"
    xo_converged 9 reload-allow 30 $(xo_vif_results "$GDOM" 0 ipv4+ipv6 ipv4+ipv6 ok ok)
    s9_show reload-allow
    xo_probe_step 9 1 reload-allow "vif$GDOM.0" "vif$GDOM.1"

    cp "$XO_CONF/dom0.toml" "$S9_POLICY"
    s9_ctl reload-revoke 60 reload "$S9_UNIT"
    xo_converged 9 reload-revoke 30 $(xo_vif_results "$GDOM" 0 none none \
        "$XO_ST_BACK_COMPUTE" "$XO_ST_FRONT_COMPUTE")
    s9_show reload-revoke
    xo_probe_step 9 2 reload-revoke "vif$GDOM.0" "vif$GDOM.1"

    _old=$(s9_mainpid)
    kill -9 "$_old"
    _t0=$(xo_now)
    s9_wait_restart "$_old" 60
    xo_emit 9 restarted rc "$?" old_pid "$_old" new_pid "$(s9_mainpid)" \
        secs "$(awk "BEGIN{print $(xo_now) - $_t0}")"
    s9_show killed
    xo_converged 9 killed 30 $(xo_vif_results "$GDOM" 0 none none "$XO_ST_BACK_COMPUTE" \
        "$XO_ST_FRONT_COMPUTE") $(xo_vif_results "$GDOM" 1 ipv4+ipv6 ipv4+ipv6 ok ok)
    xo_probe_step 9 3 killed "vif$GDOM.0" "vif$GDOM.1"

    cat "$XO_CONF/dom0.toml" "$XO_CONF/allow-public.toml" >"$S9_POLICY"
    _pid=$(s9_mainpid)
    s9_ctl reload-then-stop 60 reload "$S9_UNIT"
    s9_ctl stop 120 stop "$S9_UNIT"
    xo_emit 9 stopped pid_gone "$(kill -0 "$_pid" 2>/dev/null && echo 0 || echo 1)"
    s9_show stopped
    xo_xs_values "$S9_DIR/stopped-xs" $(for _k in xenoffload-csum-result xenoffload-csum-status; do
        echo "/local/domain/0/backend/vif/$GDOM/0/$_k /local/domain/$GDOM/device/vif/0/$_k"; done)
    xo_probe_step 9 4 stopped "vif$GDOM.0" "vif$GDOM.1"

    s9_ctl start 180 start "$S9_UNIT"
    s9_show started
    xo_converged 9 started 30 $(xo_vif_results "$GDOM" 0 ipv4+ipv6 ipv4+ipv6 ok ok) \
        $(xo_vif_results "$GDOM" 1 ipv4+ipv6 ipv4+ipv6 ok ok)
    xo_probe_step 9 5 started "vif$GDOM.0" "vif$GDOM.1"

    mkdir -p "/etc/systemd/system/$S9_UNIT.d"
    printf '[Service]\nEnvironment=XENSTORED_PATH=/dev/xen/xenbus\n' \
        >"/etc/systemd/system/$S9_UNIT.d/xenbus.conf"
    s9_ctl xenbus-daemon-reload 60 daemon-reload
    s9_ctl xenbus-restart 180 restart "$S9_UNIT"
    s9_show xenbus
    s9_sandbox xenbus
    cp "$XO_CONF/dom0.toml" "$S9_POLICY"
    s9_ctl xenbus-reload 60 reload "$S9_UNIT"
    xo_converged 9 xenbus 30 $(xo_vif_results "$GDOM" 0 none none "$XO_ST_BACK_COMPUTE" \
        "$XO_ST_FRONT_COMPUTE") $(xo_vif_results "$GDOM" 1 ipv4+ipv6 ipv4+ipv6 ok ok)
    xo_probe_step 9 6 xenbus "vif$GDOM.0" "vif$GDOM.1"

    # The journal: the agent's lines (stderr, through journald) and systemd's about the unit.
    journalctl -u "$S9_UNIT" -o cat --no-pager >"$S9_DIR/journal" 2>&1
    sed 's/^/@@XL   [journal] /' "$S9_DIR/journal"
    xo_emit 9 journal lines "$(wc -l <"$S9_DIR/journal")" \
        started_lines "$(grep -c 'backend-agent on ' "$S9_DIR/journal")" \
        reloaded_lines "$(grep -c 'policy reloaded from /etc/xenoffload/policy.toml' "$S9_DIR/journal")" \
        killed_lines "$(grep -c 'status=9/KILL' "$S9_DIR/journal")" \
        restart_lines "$(grep -c 'restart counter is at 1' "$S9_DIR/journal")" \
        enforce_lines "$(grep -c 'xenoffload.enforce INFO vif' "$S9_DIR/journal")" \
        xenbus_lines "$(grep -c 'backend-agent on /dev/xen/xenbus' "$S9_DIR/journal")" \
        denied_lines "$(grep -ciE 'permission denied|operation not permitted|EPERM|EACCES' "$S9_DIR/journal")"
    xo_emit 9 journal-tail text "$(tail -n 25 "$S9_DIR/journal" | tr '\n' '|')"

    gcall 120 g_probe_report 9 9
    xo_probe_report 9 9 "xsvalues --scenario 9 --label stopped-vif0 --saved $S9_DIR/stopped-xs"
    s9_ctl final-stop 120 stop "$S9_UNIT"
}

g_s9_guest_agent() {
    xo_guest_agent_start "scenario 9"
}
