# Scenario 10 — a network driver domain: a second PV guest, xenlab-netdd (xl.cfg
# driver_domain=1, image images/netdd-init), runs netback, a bridge ddbr0 (10.3.0.1), `xl devd`
# (which runs the vifs' hotplug scripts there) and the backend agent as a service would (started
# at its boot, `--domid` its own domid, XenStore through its own /dev/xen/xenbus: its own
# permissions, not dom0's). The guest gets a vif whose backend is that domain (`xl
# network-attach ... backend=xenlab-netdd bridge=ddbr0`), eth2 10.3.0.2. Steps, each followed by
# packets both ways (dd -> guest TCP 7000+4K / UDP 7002+4K, guest -> dd TCP 7100+4K / UDP
# 7102+4K; the guest captures eth2 with GRO off, the driver domain ddbr0, after the vif's
# ingress) and both ends' devices (ethtool -k, tc):
#   0 selectors  the policy names the guest four ways at once, one family and direction each:
#                domain name -> to-guest ipv4, uuid -> to-guest ipv6, bridge -> from-guest ipv4,
#                mac -> from-guest ipv6; the result says which of them the driver domain's agent
#                could see (and the driver domain's own reads of name, vm, /vm/<uuid>, /xapi say
#                why);
#   1 set        `xenoffload set --backend-domid DD G/N --tx on --rx on` where the toolstack
#                runs it (dom0), then `set --clear`;
#   2 hup        the policy file now computes everything, SIGHUP: revoked at both ends;
#   3 restart    `xl shutdown` of the driver domain, `xl create` again (new domid; its agent
#                starts at boot with a policy allowing blank checksums on ddbr0): what happens to
#                the guest's vif by itself, then `xl network-detach` + `xl network-attach`: the
#                vif negotiated again with the new driver domain.
# dom0 drives the driver domain through its runner as it drives the guest (ddcall, d_* functions).

S10_DD=xenlab-netdd
S10_MAC=00:16:3e:58:4f:0a
S10_DIR=/tmp/s10
S10_LOG=/run/xo-dd/backend.log

# ddcall SECONDS FUNCTION [ARGS...]: gcall, to the driver domain's runner.
ddcall() {
    local _save=$GDATA _rc
    GDATA=/local/domain/$DDOM/data
    gcall "$@"
    _rc=$?
    GDATA=$_save
    return $_rc
}

# xo_dd_agent_start WHY (in the driver domain): the backend agent daemon as its unit starts it
# (`backend-agent -v`: no --domid, no --xenstore; it finds its own domid and XenStore), with
# the policy dom0 published in /xenlab/netdd-policy (a real driver domain keeps it in its /etc)
# as /etc/xenoffload/policy.toml, real toggles and tc; logging to /run/xo-dd/backend.log.
xo_dd_agent_start() {
    mkdir -p /etc/xenoffload /run/xo-dd
    xenstore-read /xenlab/netdd-policy 2>/dev/null | base64 -d >/etc/xenoffload/policy.toml
    xo_log "starting backend-agent ($1)"
    TZ=UTC $XO_CLI -v backend-agent --mode companion --toggles netlink >>$S10_LOG 2>&1 &
    echo $! >/run/xo-dd/backend.pid
}

# s10_policy TEXT-FILE: publish a policy for the driver domain (readable by every domain;
# base64: xenstore-read escapes a newline).
s10_policy() {
    xenstore-write /xenlab/netdd-policy "$(base64 "$1" | tr -d '\n')"
    xenstore-chmod /xenlab r0
    xenstore-chmod /xenlab/netdd-policy r0
}

# s10_create LABEL: xl create the driver domain, wait (bounded) until its runner serves.
s10_create() {
    local _t0 _rc _i
    _t0=$(xo_now)
    timeout 120 xl create /etc/xen/xenlab-netdd.cfg >/tmp/s10-create.out 2>&1
    _rc=$?
    DDOM=$(xl domid "$S10_DD" 2>/dev/null)
    for _i in $(seq 1 90); do
        [ -n "$DDOM" ] && [ "$(xenstore-read "/local/domain/$DDOM/data/xo/ready" 2>/dev/null)" = 1 ] &&
            break
        sleep 1
    done
    xo_emit 10 dd-create label "$1" rc "$_rc" domid "${DDOM:-none}" \
        ready "$(xenstore-read "/local/domain/$DDOM/data/xo/ready" 2>/dev/null)" \
        driver_domain "$(xl list -l "$S10_DD" 2>/dev/null | grep -c '"driver_domain": "True"')" \
        secs "$(awk "BEGIN{print $(xo_now) - $_t0}")" \
        output "$(tail -c 600 /tmp/s10-create.out | tr '\n' '|')"
    sed 's/^/@@XL   [xl create netdd] /' /tmp/s10-create.out | tail -20
    [ -n "$DDOM" ]
}

# s10_xl LABEL CMD...: an xl command (bounded): its status, time and output.
s10_xl() {
    local _l=$1 _t0 _rc
    shift
    _t0=$(xo_now)
    timeout 120 "$@" >/tmp/s10-xl.out 2>&1
    _rc=$?
    xo_emit 10 xl label "$_l" rc "$_rc" secs "$(awk "BEGIN{print $(xo_now) - $_t0}")" \
        output "$(tail -c 600 /tmp/s10-xl.out | tr '\n' '|')"
    sed "s/^/@@XL   [xl $_l] /" /tmp/s10-xl.out | tail -20
    return $_rc
}

# s10_devid: the guest's vif whose backend is the driver domain (S10_DEV).
s10_devid() {
    local _d
    S10_DEV=""
    for _d in $(xenstore-list "/local/domain/$GDOM/device/vif" 2>/dev/null); do
        [ "$(xenstore-read "/local/domain/$GDOM/device/vif/$_d/backend-id")" = "$DDOM" ] &&
            S10_DEV=$_d
    done
    [ -n "$S10_DEV" ]
}

# s10_results TO FROM [STATUS_B [STATUS_F]]: xo_wait_xs items for both ends of the vif.
s10_results() {
    local _b=/local/domain/$DDOM/backend/vif/$GDOM/$S10_DEV _f=/local/domain/$GDOM/device/vif/$S10_DEV
    echo "$_b/xenoffload-csum-result=to-guest=$1~from-guest=$2"
    echo "$_f/xenoffload-csum-result=to-guest=$1~from-guest=$2"
    [ -n "$3" ] && echo "$_b/xenoffload-csum-status=$(echo "$3" | tr ' ' '~')"
    [ -n "$4" ] && echo "$_f/xenoffload-csum-status=$(echo "$4" | tr ' ' '~')"
    return 0
}

# s10_converged LABEL SECONDS ITEM...: wait; emit "converged" with what both ends published.
s10_converged() {
    local _l=$1 _t _rc _b=/local/domain/$DDOM/backend/vif/$GDOM/$S10_DEV
    local _f=/local/domain/$GDOM/device/vif/$S10_DEV
    shift
    _t=$(xo_wait_xs "$@")
    _rc=$?
    xo_emit 10 converged label "$_l" rc "$_rc" secs "$_t" domid "$GDOM" dd "$DDOM" \
        devid "$S10_DEV" \
        backend_result "$(xenstore-read "$_b/xenoffload-csum-result" 2>/dev/null)" \
        frontend_result "$(xenstore-read "$_f/xenoffload-csum-result" 2>/dev/null)" \
        backend_status "$(xenstore-read "$_b/xenoffload-csum-status" 2>/dev/null)" \
        frontend_status "$(xenstore-read "$_f/xenoffload-csum-status" 2>/dev/null)"
    return $_rc
}

# s10_agreed SECONDS: wait (bounded) until both ends of the vif are Connected and published
# the same, non-empty result.
s10_agreed() {
    local _b=/local/domain/$DDOM/backend/vif/$GDOM/$S10_DEV _f=/local/domain/$GDOM/device/vif/$S10_DEV
    local _end _r
    _end=$(($(cut -d. -f1 /proc/uptime) + $1))
    while [ "$(cut -d. -f1 /proc/uptime)" -lt "$_end" ]; do
        _r=$(xenstore-read "$_b/xenoffload-csum-result" 2>/dev/null)
        [ -n "$_r" ] && [ "$_r" = "$(xenstore-read "$_f/xenoffload-csum-result" 2>/dev/null)" ] &&
            [ "$(xenstore-read "$_b/state" 2>/dev/null)" = 4 ] &&
            [ "$(xenstore-read "$_f/state" 2>/dev/null)" = 4 ] && return 0
        sleep 0.2
    done
    return 1
}

# s10_vif LABEL: the vif as dom0 sees it (both directories, states, hotplug, the backend path).
s10_vif() {
    local _b=/local/domain/$DDOM/backend/vif/$GDOM/$S10_DEV _f=/local/domain/$GDOM/device/vif/$S10_DEV
    xo_emit 10 vif-state label "$1" devid "$S10_DEV" dd "$DDOM" \
        frontend_backend "$(xenstore-read "$_f/backend" 2>/dev/null)" \
        backend_dir "$(xenstore-exists "$_b" && echo present || echo absent)" \
        backend_state "$(xenstore-read "$_b/state" 2>/dev/null)" \
        frontend_state "$(xenstore-read "$_f/state" 2>/dev/null)" \
        hotplug_status "$(xenstore-read "$_b/hotplug-status" 2>/dev/null)" \
        bridge "$(xenstore-read "$_b/bridge" 2>/dev/null)" \
        backend_perms "$(xenstore-ls -p "$_b" 2>/dev/null | grep '^state ' | sed 's/.*(\(.*\))/\1/')" \
        frontend_perms "$(xenstore-ls -p "$_f" 2>/dev/null | grep '^state ' | sed 's/.*(\(.*\))/\1/')"
}

# s10_step K LABEL: packets both ways (the driver domain sends, then the guest), both ends'
# devices recorded under the label.
s10_step() {
    ddcall 120 d_s10_step "$1" "$2" "$GDOM" "$S10_DEV"
    gcall 120 g_s10_step "$1" "$2" "$S10_DEV"
    xo_emit 10 dd-step step "$1" label "$2" dd "$DDOM" devid "$S10_DEV" uptime "$(xo_now)"
}

s10_dom0() {
    local _rc
    xo_agent_presence 10 || return 0
    s10_run
    _rc=$?
    [ -n "$(xl domid "$S10_DD" 2>/dev/null)" ] && ddcall 120 d_s10_logs
    # The driver domain's console (both boots: xenconsoled appends), its runner's and
    # agent's lines, whatever happened.
    sed 's/^/@@XL dd-console: /' "/var/log/xen/console/guest-$S10_DD.log" 2>/dev/null |
        tr -d '\r' | tail -400
    xenstore-rm /xenlab/netdd-agent
    [ -n "$(xl domid "$S10_DD" 2>/dev/null)" ] && timeout 60 xl destroy "$S10_DD"
    return $_rc
}

s10_run() {
    local _vm _uuid _p _old
    mkdir -p $S10_DIR
    _vm=$(xenstore-read "/local/domain/$GDOM/vm")
    _uuid=${_vm#/vm/}
    # Policy 0: one selector per family and direction (see the header).
    _p=$S10_DIR/selectors.toml
    {
        echo '[[rule]]'; echo 'domain = "xenlab-guest"'; echo 'to-guest = { ipv4 = true }'
        echo '[[rule]]'; echo "uuid = \"$_uuid\""; echo 'to-guest = { ipv6 = true }'
        echo '[[rule]]'; echo 'bridge = "ddbr0"'; echo 'from-guest = { ipv4 = true }'
        echo '[[rule]]'; echo "mac = \"$S10_MAC\""; echo 'from-guest = { ipv6 = true }'
    } >$_p
    s10_policy $_p
    xenstore-write /xenlab/netdd-agent 1
    xenstore-chmod /xenlab/netdd-agent r0
    s10_create first || return 1
    ddcall 120 d_s10_boot first || return 1
    gcall 120 g_s10_setup
    s10_xl attach xl network-attach "$XO_GNAME" backend=$S10_DD bridge=ddbr0 mac=$S10_MAC \
        script=vif-bridge
    s10_devid
    xo_emit 10 dd-vif devid "${S10_DEV:-none}" dd "$DDOM" \
        backend "$(xenstore-read "/local/domain/$GDOM/device/vif/$S10_DEV/backend" 2>/dev/null)"
    [ -n "$S10_DEV" ] || return 1
    # Whatever the selectors give: both ends connected and agreeing (the result is the fact).
    s10_agreed 240
    s10_converged selectors 5 "/local/domain/$DDOM/backend/vif/$GDOM/$S10_DEV/state=4" \
        "/local/domain/$GDOM/device/vif/$S10_DEV/state=4"
    S10_R0=$(xenstore-read "/local/domain/$DDOM/backend/vif/$GDOM/$S10_DEV/xenoffload-csum-result")
    s10_vif selectors
    gcall 120 g_s10_iface "$S10_DEV"
    ddcall 150 d_s10_reads "$GDOM" "$S10_DEV" "$_uuid" || return 1
    # Which of the nodes the driver domain could not read exist (dom0 reads everything).
    for _p in "/local/domain/$GDOM/name" "/local/domain/$GDOM/vm" "/vm/$_uuid" "/xapi" \
        "/local/domain/$DDOM/backend/vif/$GDOM/$S10_DEV/vifname" \
        "/local/domain/$DDOM/xenoffload/policy"; do
        xo_emit 10 dom0-exists path "$_p" exists "$(xenstore-exists "$_p" && echo yes || echo no)" \
            perms "$(xenstore-ls -p "$(dirname "$_p")" 2>/dev/null | grep "^$(basename "$_p") " |
                sed 's/.*(\(.*\))$/\1/')"
    done
    ddcall 120 d_s10_capture 0
    gcall 120 g_s10_capture 0
    s10_step 0 selectors

    # 1: the toolstack's override, from dom0 (where xl runs).
    xo_run 10 set-allow 60 $XO_CLI set --xenstore /run/xenstored/socket --backend-domid "$DDOM" \
        "$GDOM/$S10_DEV" --tx on --rx on
    xo_xsdir_save $S10_DIR/overrides "/local/domain/$DDOM/xenoffload/policy"
    s10_converged set-allow 90 $(s10_results ipv4+ipv6 ipv4+ipv6)
    s10_step 1 set-allow
    xo_run 10 set-clear 60 $XO_CLI set --xenstore /run/xenstored/socket --backend-domid "$DDOM" \
        "$GDOM/$S10_DEV" --clear
    s10_converged set-clear 90 \
        "/local/domain/$DDOM/backend/vif/$GDOM/$S10_DEV/xenoffload-csum-result=$(echo "$S10_R0" | tr ' ' '~')" \
        "/local/domain/$GDOM/device/vif/$S10_DEV/xenoffload-csum-result=$(echo "$S10_R0" | tr ' ' '~')"

    # 2: the policy file computes everything; SIGHUP.
    _p=$S10_DIR/compute.toml
    printf '[default]\nto-guest = false\nfrom-guest = false\n' >$_p
    s10_policy $_p
    ddcall 120 d_s10_hup
    s10_converged hup-compute 90 $(s10_results none none "$XO_ST_BACK_COMPUTE" \
        "$XO_ST_FRONT_COMPUTE")
    s10_step 2 hup-compute

    # 3: the driver domain restarts (its agent starts at boot with the policy of then).
    _p=$S10_DIR/bridge.toml
    printf '[[rule]]\nbridge = "ddbr0"\nto-guest = true\nfrom-guest = true\n' >$_p
    s10_policy $_p
    ddcall 120 d_s10_report 0
    gcall 120 g_s10_report 0
    s10_xl shutdown xl shutdown -w "$S10_DD"
    sleep 2  # what the guest's netfront makes of its backend's end is recorded, not waited for
    s10_vif after-shutdown
    gcall 120 g_s10_netfront after-shutdown "$S10_DEV"
    _old=$DDOM
    s10_create again || return 1
    ddcall 120 d_s10_boot again || return 1
    sleep 5  # nothing brings the vif back by itself: checked, not waited for
    s10_vif after-create
    gcall 120 g_s10_netfront after-create "$S10_DEV"
    s10_xl detach xl network-detach "$XO_GNAME" "$S10_DEV"
    s10_xl reattach xl network-attach "$XO_GNAME" backend=$S10_DD bridge=ddbr0 mac=$S10_MAC \
        script=vif-bridge
    s10_devid
    s10_converged restart 240 $(s10_results ipv4+ipv6 ipv4+ipv6 ok ok) \
        "/local/domain/$DDOM/backend/vif/$GDOM/$S10_DEV/state=4" \
        "/local/domain/$GDOM/device/vif/$S10_DEV/state=4"
    s10_vif restart
    xo_emit 10 dd-restart old_domid "$_old" new_domid "$DDOM" devid "$S10_DEV"
    gcall 120 g_s10_iface "$S10_DEV"
    ddcall 120 d_s10_capture 3
    gcall 120 g_s10_capture 3
    s10_step 3 restart
    ddcall 90 d_s10_report 3
    gcall 90 g_s10_report 3
    s10_xl detach-end xl network-detach "$XO_GNAME" "$S10_DEV"
    s10_xl shutdown-end xl shutdown -w "$S10_DD"
}

# --- guest side

# s10_alive PIDFILE: whether the process of PIDFILE runs (busybox's `kill -0 ""` succeeds).
s10_alive() {
    local _pid
    _pid=$(cat "$1" 2>/dev/null)
    [ -n "$_pid" ] && kill -0 "$_pid" 2>/dev/null
}

# g_s10_setup: the guest agent running (scenario 6 or 8 left it up; alone, start it).
g_s10_setup() {
    local _was=running
    if ! s10_alive /run/xo-guest-agent.pid; then
        _was=stopped
        xo_guest_agent_start s10
    fi
    xo_emit 10 guest-agent was "$_was"
}

# g_s10_iface DEVID: address the vif's netdev (10.3.0.2/24), GRO off.
g_s10_iface() {
    local _if="" _i
    for _i in $(seq 1 100); do
        _if=$(ls "/sys/bus/xen/devices/vif-$1/net" 2>/dev/null)
        [ -n "$_if" ] && break
        sleep 0.2
    done
    $IP addr add 10.3.0.2/24 dev "$_if"; $IP link set "$_if" up
    $ETHTOOL -K "$_if" gro off
    echo "$_if" >/tmp/s10-if
    xo_emit 10 guest-iface devid "$1" iface "$_if"
}

# g_s10_netfront LABEL DEVID: netfront's view of the vif now.
g_s10_netfront() {
    xo_emit 10 netfront label "$1" devid "$2" \
        xenbus_state "$(cat "/sys/bus/xen/devices/vif-$2/state" 2>/dev/null)" \
        netdev "$(ls "/sys/bus/xen/devices/vif-$2/net" 2>/dev/null)" \
        carrier "$(cat "/sys/class/net/$(cat /tmp/s10-if)/carrier" 2>/dev/null)"
}

# g_s10_capture EPOCH: the guest's sink (once) and capture of what the driver domain sends.
g_s10_capture() {
    if [ ! -e /tmp/s10-sink.listening ]; then
        # shellcheck disable=SC2046
        $XO_PY sink --bind 0.0.0.0 $(xo_probe_ports 7000) --out /tmp/s10-sink >/dev/null 2>&1 &
        echo $! >/tmp/s10-sink.pid
    fi
    xo_capture "s10-tg-$1" "$(cat /tmp/s10-if)" 'src host 10.3.0.1 and (tcp or udp)' &&
        xo_wait_listening 60 /tmp/s10-sink
}

# g_s10_step K LABEL DEVID: the guest sends to the driver domain; records eth's state.
g_s10_step() {
    local _if
    _if=$(cat /tmp/s10-if)
    mkdir -p "$S10_DIR/$2"
    $XO_PY batch \
        "tcp-send --scenario 10 --label $2-fg --host 10.3.0.1 --port $((7100 + 4 * $1)) --bytes 65536 --timeout 30" \
        "udp-send --scenario 10 --label $2-fg --host 10.3.0.1 --port $((7102 + 4 * $1)) --count 10 --interval 0.01"
    xo_ethtool_save "$S10_DIR/$2" "$_if"
    xo_tc_save "$S10_DIR/$2" "$_if"
    echo "$2 $_if" >>$S10_DIR/steps
}

# g_s10_report EPOCH / d_s10_report EPOCH: stop the capture, report it with the steps recorded.
s10_report() {
    local _c=$1 _e=$2 _l _i
    xo_capture_stop "s10-$_c-$_e"
    set -- "tcpdump-count --scenario 10 --mode probe-dd-$_e --by-port $_c:/tmp/cap-s10-$_c-$_e"
    while read -r _l _i; do
        set -- "$@" "ethtool --scenario 10 --label $_l --saved $S10_DIR/$_l $_i" \
            "tc --scenario 10 --label $_l --saved $S10_DIR/$_l $_i"
    done <$S10_DIR/steps
    rm -f $S10_DIR/steps
    $XO_PY batch "$@"
}

g_s10_report() {
    s10_report tg "$1"
}

# --- driver domain side

# d_s10_boot LABEL: the driver domain as it booted (its domid, netback, xl devd, the agent).
d_s10_boot() {
    xo_emit 10 dd-boot label "$1" domid "$DOMID" \
        netback "$([ -d /sys/bus/xen-backend/drivers/vif ] && echo loaded || echo absent)" \
        devd "$(s10_alive /run/xldevd.pid && echo running || echo stopped)" \
        agent "$(s10_alive /run/xo-dd/backend.pid && echo running || echo stopped)" \
        bridge "$([ -d /sys/class/net/ddbr0/bridge ] && echo ddbr0 || echo none)" \
        capabilities "$(cat /proc/xen/capabilities 2>/dev/null)" \
        agent_log "$(tail -c 700 $S10_LOG 2>/dev/null | tr '\n' '|')"
}

# d_s10_reads GUEST DEVID UUID: what this domain may read and write in XenStore (its own
# permissions), the nodes the backend agent looks at among them; and what its agent logged.
d_s10_reads() {
    local _g=$1 _n=$2 _u=$3 _p _out _rc _be=/local/domain/$DOMID/backend/vif/$1/$2
    for _p in "name=/local/domain/$_g/name" "vm=/local/domain/$_g/vm" "vm-dir=/vm/$_u" \
        "vm-name=/vm/$_u/name" "xapi=/xapi" "dom0-name=/local/domain/0/name" \
        "frontend-state=/local/domain/$_g/device/vif/$_n/state" "bridge=$_be/bridge" \
        "mac=$_be/mac" "vifname=$_be/vifname" "overrides=/local/domain/$DOMID/xenoffload/policy" \
        "dom0-backends=/local/domain/0/backend/vif"; do
        _out=$(xenstore-read "${_p#*=}" 2>&1)
        _rc=$?
        xo_emit 10 dd-read what "${_p%%=*}" path "${_p#*=}" rc "$_rc" \
            value "$(echo "$_out" | head -c 200)"
    done
    _out=$(xenstore-write "/local/domain/$DOMID/xenoffload/probe" x 2>&1)
    xo_emit 10 dd-write what own-xenoffload path "/local/domain/$DOMID/xenoffload/probe" \
        rc "$?" value "$_out"
    _out=$(xenstore-write "$_be/xenoffload-probe" x 2>&1)
    _rc=$?
    xenstore-rm "$_be/xenoffload-probe" 2>/dev/null
    xo_emit 10 dd-write what own-backend path "$_be/xenoffload-probe" rc "$_rc" value "$_out"
    xo_emit 10 dd-agent running "$(s10_alive /run/xo-dd/backend.pid && echo yes || echo no)" \
        found "$(grep "domid=$_g devid=$_n found" $S10_LOG | tail -n 1)" \
        warnings "$(grep -ciE 'warning|error' $S10_LOG)" \
        log "$(tail -c 1200 $S10_LOG 2>/dev/null | tr '\n' '|')"
    xo_emit 10 dd-hotplug devd "$(s10_alive /run/xldevd.pid && echo running || echo stopped)" \
        bridge_ports "$(ls /sys/class/net/ddbr0/brif 2>/dev/null | tr '\n' ' ')" \
        devd_log "$(tail -c 1500 /var/log/xen/xldevd.log 2>/dev/null | tr '\n' '|')"
}

# d_s10_capture EPOCH: the driver domain's sink (once) and capture of what the guest sends.
d_s10_capture() {
    if [ ! -e /tmp/s10-sink.listening ]; then
        # shellcheck disable=SC2046
        $XO_PY sink --bind 0.0.0.0 $(xo_probe_ports 7100) --out /tmp/s10-sink >/dev/null 2>&1 &
        echo $! >/tmp/s10-sink.pid
    fi
    xo_capture "s10-fg-$1" ddbr0 'src host 10.3.0.2 and (tcp or udp)' &&
        xo_wait_listening 60 /tmp/s10-sink
}

# d_s10_step K LABEL GUEST DEVID: the driver domain sends to the guest; records the vif's state.
d_s10_step() {
    local _dev=vif$3.$4
    mkdir -p "$S10_DIR/$2"
    $XO_PY batch \
        "tcp-send --scenario 10 --label $2-tg --host 10.3.0.2 --port $((7000 + 4 * $1)) --bytes 65536 --timeout 30" \
        "udp-send --scenario 10 --label $2-tg --host 10.3.0.2 --port $((7002 + 4 * $1)) --count 10 --interval 0.01"
    xo_ethtool_save "$S10_DIR/$2" "$_dev"
    xo_tc_save "$S10_DIR/$2" "$_dev"
    echo "$2 $_dev" >>$S10_DIR/steps
}

# d_s10_hup: the policy dom0 published is the file now; SIGHUP the agent.
d_s10_hup() {
    xenstore-read /xenlab/netdd-policy | base64 -d >/etc/xenoffload/policy.toml
    kill -HUP "$(cat /run/xo-dd/backend.pid)"
    xo_emit 10 dd-hup rc "$?"
}

d_s10_report() {
    mkdir -p $S10_DIR
    s10_report fg "$1"
}

# d_s10_logs: the agent's and xl devd's logs on the driver domain's console.
d_s10_logs() {
    sed 's/^/[dd backend-agent] /' $S10_LOG
    sed 's/^/[dd xl devd] /' /var/log/xen/xldevd.log | tail -80
    xo_emit 10 dd-logs agent_lines "$(wc -l <$S10_LOG)"
}
