# Scenario 2 — traffic over both vifs: ping both ways and a 1 MiB TCP transfer both ways on the
# public (xenbr0/eth0) and the private (xenpriv0/eth1) network, checked end to end by SHA-256.
# One receiver process per domain serves both networks (xo.py recv), one sender process per
# domain sends on both (xo.py batch): Python start-ups dominate under TCG.

S2_TO_GUEST="tcp:10.0.0.2:5201:public-dom0-to-guest:/tmp/recv-5201.json \
tcp:10.1.0.2:5202:private-dom0-to-guest:/tmp/recv-5202.json"
S2_TO_DOM0="tcp:10.0.0.1:5211:public-guest-to-dom0:/tmp/recv-5211.json \
tcp:10.1.0.1:5212:private-guest-to-dom0:/tmp/recv-5212.json"

# s2_results SPECS: xo_results items (tcp-recv:LABEL:FILE) of recv SPECS.
s2_results() {
    local _spec _r _specs=$1
    set --
    for _spec in $_specs; do
        _r=${_spec#*:*:*:}
        set -- "$@" "tcp-recv:$_r"
    done
    xo_results 2 60 "$@"
}

s2_dom0() {
    for _net in public:10.0.0.2 private:10.1.0.2; do
        ping -c 3 -i 0.3 -W 2 "${_net#*:}" >/tmp/ping.out 2>&1
        xo_emit 2 ping label "${_net%%:*}" from dom0 to "${_net#*:}" rc "$?" \
            summary "$(grep -E 'packets transmitted' /tmp/ping.out)"
    done
    gcall 60 g_s2_recv_start || return 1
    $XO_PY batch \
        "tcp-send --scenario 2 --label public-dom0-to-guest --host 10.0.0.2 --port 5201 --timeout 60" \
        "tcp-send --scenario 2 --label private-dom0-to-guest --host 10.1.0.2 --port 5202 --timeout 60"
    rm -f /tmp/recv-521*
    # shellcheck disable=SC2086
    $XO_PY recv --scenario 2 --timeout 60 $S2_TO_DOM0 >/dev/null 2>&1 &
    _pid=$!
    gcall 150 g_s2_guest
    s2_results "$S2_TO_DOM0"
    xo_kill_wait "$_pid" TERM 5
}

g_s2_recv_start() {
    rm -f /tmp/recv-520*
    # shellcheck disable=SC2086
    $XO_PY recv --scenario 2 --timeout 60 $S2_TO_GUEST >/dev/null 2>&1 &
    xo_wait_listening 30 /tmp/recv-5201.json /tmp/recv-5202.json
}

g_s2_guest() {
    s2_results "$S2_TO_GUEST"
    for _net in public:10.0.0.1 private:10.1.0.1; do
        ping -c 2 -i 0.3 -W 2 "${_net#*:}" >/tmp/ping.out 2>&1
        xo_emit 2 ping label "${_net%%:*}" from guest to "${_net#*:}" rc "$?" \
            summary "$(grep -E 'packets transmitted' /tmp/ping.out)"
    done
    $XO_PY batch \
        "tcp-send --scenario 2 --label public-guest-to-dom0 --host 10.0.0.1 --port 5211 --timeout 60" \
        "tcp-send --scenario 2 --label private-guest-to-dom0 --host 10.1.0.1 --port 5212 --timeout 60"
}
