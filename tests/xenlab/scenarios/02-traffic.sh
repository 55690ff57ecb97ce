# Scenario 2 — traffic over both vifs: ping both ways and a 1 MiB TCP transfer both ways on the
# public (xenbr0/eth0) and the private (xenpriv0/eth1) network, checked end to end by SHA-256.

s2_dom0() {
    for _net in public:10.0.0.1:10.0.0.2:1 private:10.1.0.1:10.1.0.2:2; do
        _label=${_net%%:*}; _rest=${_net#*:}
        _mine=${_rest%%:*}; _rest=${_rest#*:}; _peer=${_rest%%:*}; _n=${_rest#*:}
        ping -c 3 -W 2 "$_peer" >/tmp/ping.out 2>&1
        xo_emit 2 ping label "$_label" from dom0 to "$_peer" rc "$?" \
            summary "$(grep -E 'packets transmitted' /tmp/ping.out)"
        gcall 30 g_s2_recv_start "$_peer" "520$_n"
        $XO_PY tcp-send --scenario 2 --label "$_label-dom0-to-guest" --host "$_peer" \
            --port "520$_n" --timeout 60
        gcall 90 g_s2_recv_result "$_label-dom0-to-guest" "520$_n"
        rm -f "/tmp/recv-521$_n.json"
        $XO_PY tcp-recv --bind "$_mine" --port "521$_n" --timeout 60 --out "/tmp/recv-521$_n.json" &
        _pid=$!
        gcall 90 g_s2_send "$_label-guest-to-dom0" "$_mine" "521$_n"
        $XO_PY result --scenario 2 --fact tcp-recv --label "$_label-guest-to-dom0" --timeout 30 \
            "/tmp/recv-521$_n.json"
        xo_kill_wait "$_pid" TERM 5
    done
}

g_s2_recv_start() {
    rm -f "/tmp/recv-$2.json" "/tmp/recv-$2.json.listening"
    $XO_PY tcp-recv --bind "$1" --port "$2" --timeout 60 --out "/tmp/recv-$2.json" >/dev/null 2>&1 &
    xo_wait_file "/tmp/recv-$2.json.listening" 30
}

g_s2_recv_result() {
    $XO_PY result --scenario 2 --fact tcp-recv --label "$1" --timeout 60 "/tmp/recv-$2.json"
}

g_s2_send() {
    ping -c 2 -W 2 "$2" >/tmp/ping.out 2>&1
    xo_emit 2 ping label "${1%%-*}" from guest to "$2" rc "$?" \
        summary "$(grep -E 'packets transmitted' /tmp/ping.out)"
    $XO_PY tcp-send --scenario 2 --label "$1" --host "$2" --port "$3" --timeout 60
}
