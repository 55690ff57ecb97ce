# Scenario 7 — the agents as daemons beside the real netback and netfront (issue 10, "and in
# the real system"). Scenario 6 started them: dom0's `backend-agent` (policy file
# /etc/xenoffload/policy.toml, configs/dom0.toml: the private bridge may carry blank checksums,
# the public one not) and the guest's `guest-agent`, both with tc; they stay up through
# scenario 8. Steps (each followed by a probe, probes.sh: packets both ways on both vifs,
# ethtool -k and tc at both ends, both ends' published result and status):
#   0 start       as scenario 6 left it; a second agent (--once) beside each daemon writes
#                 nothing and exits 5;
#   1 set-allow   `set DOMID/0 --tx on --rx on`: blank checksums allowed both ways on vif 0;
#   2 set-clear   `set DOMID/0 --clear`: revoked;
#  11 rapid-flip  the override written and removed 50 ms apart, twice: revoked at both ends'
#                 devices (issue 19: a step whose commit conflicted must not leave the device
#                 allowing);
#   3 hup-allow   the policy file allows the public bridge too, SIGHUP;
#   4 hup-revoke  the file changed back, SIGHUP: revoked;
#   5 reconnect   the guest unbinds and binds netfront (scenario 5's frontend reconnect).
# For both revocations, a UDP stream (one datagram per 10 ms, port 6990/6991) runs to the guest
# around the command, between two marker pings (ping -s 101/102, 103/104: "cmd" just before the
# command, "done" right after it returned; for `set --clear` also "write" (-s 105), sent when
# xenstore-watch saw the override node go: the CLI spends seconds starting under TCG before it
# writes); xo.py timeline finds in the guest's capture of eth0 (and in dom0's capture of vifD.0)
# when the stream's checksums became correct, relative to the markers. The backend agent's log
# says when it changed the vif (xo.py logtime).

S7_LOG=/run/xo/backend.log

# s7_stream PORT: start a UDP stream to the guest's eth0 (about 6 s); pid in /tmp/s7-stream.pid.
# Returns once its first datagram went out (bounded: python starts in 1-3 s under TCG), plus
# 0.5 s of stream, so that datagrams go out before the command that follows.
s7_stream() {
    rm -f "/tmp/s7-stream-$1.started"
    $XO_PY udp-send --scenario 7 --label "stream-$1" --host 10.0.0.2 --port "$1" --count 600 \
        --size 200 --interval 0.01 --started "/tmp/s7-stream-$1.started" \
        >"/tmp/s7-stream-$1.out" 2>&1 &
    echo $! >/tmp/s7-stream.pid
    local _w=0
    while [ ! -e "/tmp/s7-stream-$1.started" ] && [ $_w -lt 100 ]; do
        sleep 0.1; _w=$((_w + 1))
    done
    sleep 0.5
}

s7_stream_end() {
    local _w=0
    while kill -0 "$(cat /tmp/s7-stream.pid)" 2>/dev/null && [ $_w -lt 100 ]; do
        sleep 0.2; _w=$((_w + 1))
    done
    xo_kill_wait "$(cat /tmp/s7-stream.pid)" TERM 2
    cat "/tmp/s7-stream-$1.out"
}

s7_dom0() {
    xo_agent_presence 7 || return 0
    gcall 60 g_probe_start 7 || return 1
    xo_probe_dom0_start 7
    xo_capture s7-vif "vif$GDOM.0" 'dst host 10.0.0.2 and (udp or icmp)'
    xo_converged 7 start 30 $(xo_vif_results "$GDOM" 0 none none "$XO_ST_BACK_COMPUTE" \
        "$XO_ST_FRONT_COMPUTE") $(xo_vif_results "$GDOM" 1 ipv4+ipv6 ipv4+ipv6 ok ok)
    # One writer per end: --once beside a running daemon writes nothing and exits 5.
    xo_run 7 backend-once-beside-daemon 120 $XO_CLI backend-agent --xenstore \
        /run/xenstored/socket --config "$XO_CONF/dom0.toml" --toggles netlink --once --timeout 30
    gcall 120 g_s7_once
    xo_probe_step 7 0 start "vif$GDOM.0" "vif$GDOM.1"

    xo_run 7 set-allow 60 $XO_CLI set --xenstore /run/xenstored/socket "$GDOM/0" --tx on --rx on
    xo_converged 7 set-allow 30 $(xo_vif_results "$GDOM" 0 ipv4+ipv6 ipv4+ipv6 ok ok)
    xo_probe_step 7 1 set-allow "vif$GDOM.0" "vif$GDOM.1"

    s7_stream 6990
    # A third marker (ping -s 105) the moment the override node is removed: xenstore-watch
    # fires once when it registers, once when the node changes. `set` keys a vif's override
    # by the VM's UUID (/local/domain/D/vm names /vm/<uuid>).
    _vm=$(xenstore-read "/local/domain/$GDOM/vm")
    (timeout 60 xenstore-watch -n 2 "/local/domain/0/xenoffload/policy/vif/${_vm#/vm/}/0" |
        { read -r _; read -r _; xo_marker 10.0.0.2 105; }) &
    sleep 0.5  # the watch registered (its first event) before the command; nothing decided here
    xo_marker 10.0.0.2 101
    xo_run 7 set-clear 60 $XO_CLI set --xenstore /run/xenstored/socket "$GDOM/0" --clear
    xo_marker 10.0.0.2 102
    xo_converged 7 set-clear 30 $(xo_vif_results "$GDOM" 0 none none "$XO_ST_BACK_COMPUTE" \
        "$XO_ST_FRONT_COMPUTE")
    s7_stream_end 6990
    xo_probe_step 7 2 set-clear "vif$GDOM.0" "vif$GDOM.1"

    # Rapid flip (issue 19): the override written and removed 50 ms apart, as a script
    # running `set --tx on --rx on` then `set --clear` does (xenstore-write/-rm: the CLI alone
    # takes seconds to start under TCG). The guest's step that applies the allowance may be
    # the one whose commit the removal makes conflict; both devices must end revoked.
    _node="/local/domain/0/xenoffload/policy/vif/${_vm#/vm/}/0"
    xenstore-write "$_node" "to-guest-ipv4=on to-guest-ipv6=on from-guest-ipv4=on from-guest-ipv6=on"
    sleep 0.05
    xenstore-rm "$_node"
    xenstore-write "$_node" "to-guest-ipv4=on to-guest-ipv6=on from-guest-ipv4=on from-guest-ipv6=on"
    sleep 0.05
    xenstore-rm "$_node"
    sleep 3  # what a late step would do has happened before the probe
    xo_converged 7 rapid-flip 30 $(xo_vif_results "$GDOM" 0 none none "$XO_ST_BACK_COMPUTE" \
        "$XO_ST_FRONT_COMPUTE")
    xo_probe_step 7 11 rapid-flip "vif$GDOM.0" "vif$GDOM.1"

    cat "$XO_CONF/dom0.toml" "$XO_CONF/allow-public.toml" >/etc/xenoffload/policy.toml
    kill -HUP "$(cat /run/xo/backend.pid)"
    xo_converged 7 hup-allow 30 $(xo_vif_results "$GDOM" 0 ipv4+ipv6 ipv4+ipv6 ok ok)
    xo_probe_step 7 3 hup-allow "vif$GDOM.0" "vif$GDOM.1"

    s7_stream 6991
    cp "$XO_CONF/dom0.toml" /etc/xenoffload/policy.toml
    xo_marker 10.0.0.2 103
    kill -HUP "$(cat /run/xo/backend.pid)"
    xo_marker 10.0.0.2 104
    xo_converged 7 hup-revoke 30 $(xo_vif_results "$GDOM" 0 none none "$XO_ST_BACK_COMPUTE" \
        "$XO_ST_FRONT_COMPUTE")
    s7_stream_end 6991
    xo_probe_step 7 4 hup-revoke "vif$GDOM.0" "vif$GDOM.1"

    xenstore-write /local/domain/0/data/xenlab-mark s7-reconnect
    gcall 200 g_s7_reconnect
    xo_converged 7 reconnect 60 $(xo_vif_results "$GDOM" 0 none none "$XO_ST_BACK_COMPUTE" \
        "$XO_ST_FRONT_COMPUTE") $(xo_vif_results "$GDOM" 1 ipv4+ipv6 ipv4+ipv6 ok ok) \
        "/local/domain/$GDOM/device/vif/0/state=4" "/local/domain/$GDOM/device/vif/1/state=4"
    xo_probe_step 7 5 reconnect "vif$GDOM.0" "vif$GDOM.1"

    xo_capture_stop s7-vif
    timeout 60 $XO_CLI show --xenstore /run/xenstored/socket --json >/tmp/s7-show 2>/tmp/s7-show.err
    xo_probe_report 7 7 \
        "emit --scenario 7 --file json=/tmp/s7-show show rc=$? where=dom0" \
        "timeline --scenario 7 --label set-clear --point vif --capture /tmp/cap-s7-vif --mark cmd=101 --mark done=102 --mark write=105 --stream-port 6990" \
        "timeline --scenario 7 --label hup-revoke --point vif --capture /tmp/cap-s7-vif --mark cmd=103 --mark done=104 --stream-port 6991" \
        "logtime --scenario 7 --label backend --file $S7_LOG vif$GDOM.0 domid=$GDOM" \
        "trace-states --scenario 7 --trace $XO_TRACE --mark '/local/domain/0/data/xenlab-mark s7-reconnect' backend-0=/local/domain/0/backend/vif/$GDOM/0/state frontend-0=/local/domain/$GDOM/device/vif/0/state"
    gcall 120 g_s7_report
}

g_s7_once() {
    xo_run 7 guest-once-beside-daemon 120 $XO_CLI guest-agent --xenstore /dev/xen/xenbus \
        --config "$XO_CONF/guest.toml" --toggles netlink --once --timeout 30
    return 0
}

g_s7_reconnect() {
    xo_capture_stop tg-pub-7 tg-priv-7
    mv /tmp/cap-tg-pub-7 /tmp/cap-tg-pub-7a; mv /tmp/cap-tg-priv-7 /tmp/cap-tg-priv-7a
    g_reconnect 7
    # The guest agent applies its result to the new eth0 (tc filter, gso_max_segs 1): wait
    # (bounded) for it before the captures start again, then keep both capture files.
    for _i in $(seq 1 150); do
        $TC filter show dev eth0 egress 2>/dev/null | grep -q csum && break
        sleep 0.2
    done
    g_probe_start 7
}

g_s7_report() {
    xo_capture_stop tg-pub-7 tg-priv-7
    cat /tmp/cap-tg-pub-7 >>/tmp/cap-tg-pub-7a; cat /tmp/cap-tg-priv-7 >>/tmp/cap-tg-priv-7a
    mv /tmp/cap-tg-pub-7a /tmp/cap-tg-pub-7; mv /tmp/cap-tg-priv-7a /tmp/cap-tg-priv-7
    timeout 60 $XO_CLI show --json >/tmp/s7-show 2>/tmp/s7-show.err
    g_probe_report 7 7 \
        "emit --scenario 7 --file json=/tmp/s7-show --file stderr=/tmp/s7-show.err show rc=$? where=guest" \
        "timeline --scenario 7 --label set-clear --point eth0 --capture /tmp/cap-tg-pub-7 --mark cmd=101 --mark done=102 --mark write=105 --stream-port 6990" \
        "timeline --scenario 7 --label hup-revoke --point eth0 --capture /tmp/cap-tg-pub-7 --mark cmd=103 --mark done=104 --stream-port 6991" \
        "logtime --scenario 7 --label guest --file /run/xo-guest-agent.log eth0 devid=0"
}
