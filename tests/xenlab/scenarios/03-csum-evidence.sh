# Scenario 3 — packet-level checksum evidence with plain ethtool -K in dom0 (no xenoffload).
# The guest captures with tcpdump -vv what dom0 sends it (TCP + UDP from dom0's own stack over
# xenbr0/vifD.0) and counts packets whose TCP/UDP checksum is correct vs incorrect ("blank",
# to be completed), with vifD.0 tx checksum offload ON (stock: dom0 sends blank checksums the
# guest must complete) and OFF (safe policy: dom0 computes them). The guest also routes to a
# further network (10.9.0.0/24, a veth pair into a network namespace inside the guest); its
# capture on the router's outgoing veth shows what leaves the guest.
# Modes (vif tx : guest eth0 GRO): "on" (on:off), "off" (off:off), "off+gro" (off:on). GRO is off
# in the first two so the capture shows the packets as dom0 sent them; "off+gro" shows that the
# guest's own GRO turns merged TCP packets back into partial-checksum packets (CHECKSUM_PARTIAL),
# which is what then leaves towards the namespace.

#
# Mode "guest-tx" (the other direction, the baseline of scenario 6): the guest sends TCP and UDP
# to dom0 (10.0.0.1) and to a capture namespace in dom0 (xo-cap, 10.0.0.9 on xo-capn, a veth
# whose peer is a port of xenbr0), both over eth0/vifD.0, nothing of xenoffload anywhere.
# Captures after the vif's ingress: dom0's xo-capn (forwarded through the bridge; veth keeps a
# blank checksum blank) and xenbr0 (dom0's own delivery), and the guest's eth0 (its egress, as
# it leaves). A capture on vifD.0 itself would not do: packet taps see ingress packets before
# the tc ingress hook that scenario 6 uses.

S3_NS=xo-far

# xo_cap_setup: dom0's capture namespace xo-cap (10.0.0.9 on xo-capn, its peer xo-cap a port of
# xenbr0), kept for scenarios 6 to 8.
xo_cap_setup() {
    [ -e /run/netns/xo-cap ] && return 0
    $IP netns add xo-cap || return 1
    $IP link add xo-cap type veth peer name xo-capn || return 1
    $IP link set xo-capn netns xo-cap
    $BRCTL addif xenbr0 xo-cap
    $IP link set xo-cap up
    $IP -n xo-cap link set lo up
    $IP -n xo-cap addr add 10.0.0.9/24 dev xo-capn
    $IP -n xo-cap link set xo-capn up
    xo_emit run capture-namespace ns xo-cap addr 10.0.0.9 \
        gro "$($IP netns exec xo-cap $ETHTOOL -k xo-capn | grep generic-receive-offload)"
}

# xo_gtx_round SCENARIO MODE: one round of guest-sent traffic (256 KiB TCP and 20 UDP
# datagrams of 512 bytes to 10.0.0.1 and to 10.0.0.9), captured at xo-capn and xenbr0 in dom0
# and at eth0 in the guest, counted per destination ("csum-capture" facts, mode MODE); the
# receivers check what arrived (SHA-256, datagrams intact).
xo_gtx_round() {
    local _s=$1 _m=$2 _pid1 _pid2
    rm -f /tmp/gtx-r*
    $XO_PY recv --scenario "$_s" --timeout 60 "tcp:10.0.0.1:5311:$_m-dom0:/tmp/gtx-r5311" \
        "udp:10.0.0.1:5312:$_m-dom0:/tmp/gtx-r5312" >/dev/null 2>&1 &
    _pid1=$!
    $IP netns exec xo-cap $XO_PY recv --scenario "$_s" --timeout 60 \
        "tcp:10.0.0.9:5313:$_m-cap:/tmp/gtx-r5313" "udp:10.0.0.9:5314:$_m-cap:/tmp/gtx-r5314" \
        >/dev/null 2>&1 &
    _pid2=$!
    xo_capture gtx-cap xo-capn 'src host 10.0.0.2 and (tcp or udp)' xo-cap
    xo_capture gtx-br xenbr0 'src host 10.0.0.2 and (tcp or udp)'
    xo_wait_listening 30 /tmp/gtx-r5311 /tmp/gtx-r5312 /tmp/gtx-r5313 /tmp/gtx-r5314
    gcall 120 g_gtx_round "$_s" "$_m"
    xo_results "$_s" 60 "tcp-recv:$_m-dom0:/tmp/gtx-r5311" "udp-recv:$_m-dom0:/tmp/gtx-r5312" \
        "tcp-recv:$_m-cap:/tmp/gtx-r5313" "udp-recv:$_m-cap:/tmp/gtx-r5314"
    xo_capture_stop gtx-cap gtx-br
    xo_kill_wait "$_pid1" TERM 5
    xo_kill_wait "$_pid2" TERM 5
    $XO_PY tcpdump-count --scenario "$_s" --mode "$_m" xo-capn:/tmp/cap-gtx-cap \
        xenbr0:/tmp/cap-gtx-br
}

g_gtx_round() {
    local _s=$1 _m=$2
    xo_capture gtx-eth0 eth0 'src host 10.0.0.2 and (tcp or udp)' || return 1
    $XO_PY batch \
        "tcp-send --scenario $_s --label $_m-dom0 --host 10.0.0.1 --port 5311 --bytes 262144 --timeout 60" \
        "udp-send --scenario $_s --label $_m-dom0 --host 10.0.0.1 --port 5312 --count 20" \
        "tcp-send --scenario $_s --label $_m-cap --host 10.0.0.9 --port 5313 --bytes 262144 --timeout 60" \
        "udp-send --scenario $_s --label $_m-cap --host 10.0.0.9 --port 5314 --count 20" \
        "kill --signal INT --wait 10 /tmp/cap-gtx-eth0.pid" \
        "tcpdump-count --scenario $_s --mode $_m eth0:/tmp/cap-gtx-eth0"
}

s3_dom0() {
    $IP route replace 10.9.0.0/24 via 10.0.0.2 dev xenbr0
    gcall 60 g_s3_setup || return 1
    ping -c 2 -W 2 10.9.0.2 >/tmp/ping.out 2>&1
    xo_emit 3 ping label routed from dom0 to 10.9.0.2 rc "$?"
    for _variant in on:on:off off:off:off off+gro:off:on; do
        _mode=${_variant%%:*}; _tx=${_variant#*:}; _tx=${_tx%%:*}; _gro=${_variant##*:}
        $ETHTOOL -K "vif$GDOM.0" tx "$_tx" >/tmp/ethtool-K.out 2>&1
        xo_emit 3 ethtool-K iface "vif$GDOM.0" setting "tx $_tx" rc "$?" \
            output "$(tr '\n' ' ' </tmp/ethtool-K.out)"
        sleep 1
        xo_ethtool_save "/tmp/s3-eth-$_mode" "vif$GDOM.0" xenbr0
        gcall 90 g_s3_start "$_mode" "$_gro" || return 1
        # One Python start: the ethtool facts saved above, then the four senders in turn.
        $XO_PY batch \
            "ethtool --scenario 3 --label mode-$_mode --saved /tmp/s3-eth-$_mode vif$GDOM.0 xenbr0" \
            "tcp-send --scenario 3 --label $_mode-direct --host 10.0.0.2 --port 5301 --bytes 262144 --timeout 60" \
            "udp-send --scenario 3 --label $_mode-direct --host 10.0.0.2 --port 5302 --count 20" \
            "tcp-send --scenario 3 --label $_mode-routed --host 10.9.0.2 --port 5303 --bytes 262144 --timeout 60" \
            "udp-send --scenario 3 --label $_mode-routed --host 10.9.0.2 --port 5304 --count 20"
        gcall 120 g_s3_stop "$_mode"
    done
    $ETHTOOL -K "vif$GDOM.0" tx on >/dev/null 2>&1
    $IP route del 10.9.0.0/24 2>/dev/null
    xo_cap_setup || return 1
    xo_gtx_round 3 guest-tx
}

g_s3_setup() {
    mkdir -p /run/netns
    $IP netns add $S3_NS || return 1
    $IP link add xo-r type veth peer name xo-n || return 1
    $IP link set xo-n netns $S3_NS
    $IP addr add 10.9.0.1/24 dev xo-r; $IP link set xo-r up
    $IP -n $S3_NS link set lo up
    $IP -n $S3_NS addr add 10.9.0.2/24 dev xo-n; $IP -n $S3_NS link set xo-n up
    $IP -n $S3_NS route add default via 10.9.0.1
    echo 1 >/proc/sys/net/ipv4/ip_forward
    xo_emit 3 router ip_forward "$(cat /proc/sys/net/ipv4/ip_forward)" netns $S3_NS \
        far_addr "$($IP -n $S3_NS -br addr show xo-n | tr -s ' ')"
    $XO_PY ethtool --scenario 3 --label router xo-r
}

g_s3_start() {
    _m=$1
    $ETHTOOL -K eth0 gro "$2"
    xo_emit 3 guest-gro mode "$_m" gro "$2" rc "$?"
    rm -f /tmp/s3-*
    for _p in eth0 xo-r; do
        $TCPDUMP -Z root -i "$_p" -nn -vv -l -s 262144 'src host 10.0.0.1 and (tcp or udp)' \
            >"/tmp/s3-cap-$_p" 2>"/tmp/s3-cap-$_p.err" &
        echo $! >"/tmp/s3-cap-$_p.pid"
    done
    # One receiver process per network namespace (TCP and UDP threads in each).
    $XO_PY recv --scenario 3 --timeout 60 "tcp:10.0.0.2:5301:$_m-direct:/tmp/s3-r5301.json" \
        "udp:10.0.0.2:5302:$_m-direct:/tmp/s3-r5302.json" >/dev/null 2>&1 &
    $IP netns exec $S3_NS $XO_PY recv --scenario 3 --timeout 60 \
        "tcp:10.9.0.2:5303:$_m-routed:/tmp/s3-r5303.json" \
        "udp:10.9.0.2:5304:$_m-routed:/tmp/s3-r5304.json" >/dev/null 2>&1 &
    _ok=0
    for _i in $(seq 1 150); do
        _ok=1
        for _f in /tmp/s3-r5301.json /tmp/s3-r5302.json /tmp/s3-r5303.json /tmp/s3-r5304.json; do
            [ -e "$_f.listening" ] || _ok=0
        done
        for _p in eth0 xo-r; do grep -q listening "/tmp/s3-cap-$_p.err" || _ok=0; done
        [ $_ok = 1 ] && break
        sleep 0.2
    done
    xo_emit 3 capture-start mode "$_m" ready "$_ok"
    [ $_ok = 1 ]
}

g_s3_stop() {
    _m=$1
    xo_results 3 60 "tcp-recv:$_m-direct:/tmp/s3-r5301.json" \
        "udp-recv:$_m-direct:/tmp/s3-r5302.json" "tcp-recv:$_m-routed:/tmp/s3-r5303.json" \
        "udp-recv:$_m-routed:/tmp/s3-r5304.json"
    sleep 1
    for _p in eth0 xo-r; do
        xo_kill_wait "$(cat /tmp/s3-cap-$_p.pid)" INT 10
        xo_log "tcpdump $_p ($_m): $(tail -n 3 /tmp/s3-cap-$_p.err | tr '\n' ' ')"
        head -n 4 "/tmp/s3-cap-$_p" | sed 's/^/  sample: /'
    done
    $XO_PY tcpdump-count --scenario 3 --mode "$_m" eth0:/tmp/s3-cap-eth0 xo-r:/tmp/s3-cap-xo-r
}
