# The kernel matrix's cases (kvmtrace-lab, tests/src/kernels.rs), sourced by busybox sh: as a
# VM's /init on each Debian kernel, and in a network namespace of the build host for the
# reference column. The same text runs in both places, so the columns differ only by kernel.
#
# Environment: KT (kvmtrace under test), SI (the stand-in QEMU), BB (busybox), P (prefix of the
# namespaces made here), D (seconds per `follow`), LATE (modules to load after the `noclsact`
# case, VM only; unset on the host, where that case is not run).
#
# The hypervisor is the namespace this runs in: br0 with the tap vnet0 that the stand-in holds
# (its command line says `-name guest=kvm1`), a routed uplink up0 with MASQUERADE to "$P-o"
# (203.0.113.1, 2001:db8::1 on its lo; no IPv4 route back to 10.77.0.0/24). The guest is
# "$P-g" (eth0 10.77.0.2, fd00:77::2), whose veth peer w0 sits in "$P-w": the stand-in copies
# frames between vnet0 and an AF_PACKET socket on w0, so here they appear only on the tap.
#
# Output: only lines starting with "KTM " count (the serial console also carries the kernel's).
#   KTM begin CASE | KTM out CASE <stdout line> | KTM err CASE <stderr line> | KTM end CASE rc=N

IP=/usr/bin/ip
TC=/usr/sbin/tc
NFT=/usr/sbin/nft
G="$P-g"
W="$P-w"
O="$P-o"
MAC=52:54:00:4b:54:01

say() { echo "KTM $*"; }
must() { "$@" || say "error: $*"; }

# What the kernel offers, for docs/kernels.md: BTF, the reason argument of kfree_skb (5.17+),
# and by their kernel functions TCX (6.6+), BPF netfilter links (6.4+), the BPF ring buffer (5.8+).
caps() {
    [ -e /sys/kernel/btf/vmlinux ] && say "cap btf yes" || say "cap btf no"
    f=/sys/kernel/tracing/events/skb/kfree_skb/format
    # On the host this runs in `ip netns exec`'s own mount namespace: the mount stays there.
    [ -e $f ] || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
    if grep -q 'reason' $f 2>/dev/null; then
        say "cap kfree_skb_reason yes"
    else
        say "cap kfree_skb_reason no"
    fi
    found=$(grep -owE 'tcx_prog_attach|bpf_nf_link_attach|bpf_ringbuf_output' /proc/kallsyms | sort -u)
    for pair in tcx:tcx_prog_attach netfilter_link:bpf_nf_link_attach ringbuf:bpf_ringbuf_output; do
        case " $(echo $found) " in
            *" ${pair#*:} "*) say "cap ${pair%%:*} yes" ;;
            *) say "cap ${pair%%:*} no" ;;
        esac
    done
}

setup() {
    echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad
    echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad
    must $IP link set lo up
    must $IP link add br0 type bridge
    must $IP addr add 10.77.0.1/24 dev br0
    must $IP -6 addr add fd00:77::1/64 dev br0 nodad
    must $IP link set br0 up
    must $IP tuntap add dev vnet0 mode tap
    must $IP link set vnet0 master br0
    must $IP link set vnet0 up

    must $IP netns add "$O"
    must $IP link add up0 type veth peer name eth0 netns "$O"
    must $IP addr add 192.0.2.2/24 dev up0
    must $IP -6 addr add 2001:db8:2::2/64 dev up0 nodad
    must $IP link set up0 up
    must $IP -n "$O" link set lo up
    must $IP -n "$O" addr add 192.0.2.1/24 dev eth0
    must $IP -n "$O" -6 addr add 2001:db8:2::1/64 dev eth0 nodad
    must $IP -n "$O" link set eth0 up
    must $IP -n "$O" addr add 203.0.113.1/32 dev lo
    must $IP -n "$O" -6 addr add 2001:db8::1/128 dev lo nodad
    must $IP -n "$O" -6 route add fd00:77::/64 via 2001:db8:2::2
    must $IP route add default via 192.0.2.1
    must $IP -6 route add default via 2001:db8:2::1
    echo 1 > /proc/sys/net/ipv4/ip_forward
    echo 1 > /proc/sys/net/ipv6/conf/all/forwarding
    masquerade_on

    must $IP netns add "$G"
    must $IP netns add "$W"
    must $IP -n "$G" link add eth0 type veth peer name w0 netns "$W"
    must $IP -n "$G" link set eth0 address $MAC
    must $IP -n "$G" addr add 10.77.0.2/24 dev eth0
    must $IP -n "$G" -6 addr add fd00:77::2/64 dev eth0 nodad
    must $IP -n "$G" link set lo up
    must $IP -n "$G" link set eth0 up
    must $IP -n "$G" route add default via 10.77.0.1
    must $IP -n "$G" -6 route add default via fd00:77::1
    must $IP -n "$W" link set w0 up

    KT_WIRE="/run/netns/$W:w0" "$SI" -name guest=kvm1,debug-threads=on \
        -netdev tap,id=net0,ifname=vnet0,script=no,downscript=no \
        -device virtio-net-pci,netdev=net0,mac=$MAC &
    SIPID=$!
    n=0
    until $IP netns exec "$G" "$BB" ping -c 1 -W 1 203.0.113.1 >/dev/null 2>&1; do
        n=$((n + 1))
        if [ $n -ge 30 ]; then
            say "error: the guest cannot reach 203.0.113.1"
            break
        fi
    done
    n=0
    until $IP netns exec "$G" "$BB" ping -6 -c 1 -W 1 2001:db8::1 >/dev/null 2>&1; do
        n=$((n + 1))
        if [ $n -ge 30 ]; then
            say "error: the guest cannot reach 2001:db8::1"
            break
        fi
    done
    say "lab ready"
}

masquerade_on() {
    printf '%s\n' 'table ip ktnat {' \
        '  chain post { type nat hook postrouting priority 100; ip saddr 10.77.0.0/24 oifname "up0" masquerade; }' \
        '}' | must $NFT -f -
}

# pinger ARGS...: the guest pings in the background (one ICMP identifier: one flow).
pinger() {
    $IP netns exec "$G" "$BB" ping "$@" >/dev/null 2>&1 &
    PINGER=$!
    sleep 1
}
stop_pinger() {
    kill "$PINGER" 2>/dev/null
    wait "$PINGER" 2>/dev/null
}

# kt CASE ARGS...: runs kvmtrace, its stdout and stderr tagged with the case.
kt() {
    name=$1
    shift
    say "begin $name"
    "$KT" "$@" >/tmp/kt.out 2>/tmp/kt.err
    rc=$?
    grep -v "\"type\":\"hop\"" /tmp/kt.out | sed "s/^/KTM out $name /"
    sed "s/^/KTM err $name /" /tmp/kt.err | head -n 40
    say "end $name rc=$rc"
}

follow4() { kt "$1" follow kvm1 203.0.113.1 --json --duration "$D" --proto icmp; }

cases() {
    if [ -n "${LATE+x}" ]; then
        # The TC hooks before 6.6 need clsact (sch_ingress) and cls_bpf: not loaded yet.
        pinger -i 0.5 203.0.113.1
        follow4 noclsact
        stop_pinger
        for m in $LATE; do
            insmod "/lib/kt/$m.ko" || say "error: insmod $m"
        done
    fi

    pinger -i 0.5 203.0.113.1
    kt healthy4 follow kvm1 203.0.113.1 --json --duration "$D" --proto icmp --record /tmp/kt.trace
    stop_pinger
    kt replay replay /tmp/kt.trace --json

    pinger -6 -i 0.5 2001:db8::1
    kt healthy6 follow kvm1 2001:db8::1 --json --duration "$D" --proto icmp
    stop_pinger

    printf '%s\n' 'table inet ktfilter {' \
        '  chain forward { type filter hook forward priority 0; policy drop; }' \
        '}' | must $NFT -f -
    pinger -i 0.5 203.0.113.1
    follow4 forward_drop
    # The same drop with --explain-rules: its own nftables table (an owner table from 5.12;
    # before, a plain one removed on exit).
    kt explain follow kvm1 203.0.113.1 --json --duration "$D" --proto icmp --explain-rules
    say "begin watch"
    "$KT" watch --listen 127.0.0.1:9464 >/tmp/kt.out 2>/tmp/kt.err &
    wpid=$!
    n=0
    until "$BB" wget -q -O /dev/null http://127.0.0.1:9464/healthz 2>/dev/null; do
        n=$((n + 1))
        [ $n -ge 60 ] && break
        sleep 0.5
    done
    sleep 4
    "$BB" wget -q -O - http://127.0.0.1:9464/metrics 2>/dev/null |
        grep -E '^kvmtrace_(drops_total|tap_packets_total|vm_info)\{' | sed "s/^/KTM out watch /"
    kill -TERM $wpid
    wait $wpid
    rc=$?
    sed "s/^/KTM err watch /" /tmp/kt.err | head -n 40
    say "end watch rc=$rc"
    stop_pinger
    must $NFT delete table inet ktfilter

    must $IP route add blackhole 203.0.113.1/32
    pinger -i 0.5 203.0.113.1
    follow4 blackhole
    stop_pinger
    must $IP route del blackhole 203.0.113.1/32

    echo 0 > /proc/sys/net/ipv4/ip_forward
    pinger -i 0.5 203.0.113.1
    follow4 ip_forward_off
    stop_pinger
    kt doctor doctor kvm1 203.0.113.1 --json
    echo 1 > /proc/sys/net/ipv4/ip_forward

    # The gateway's MAC pinned, so no ARP waits in the tiny queue; 1000-byte pings every
    # 0.2 s overrun 8 kbit/s at once.
    omac=$($IP -n "$O" link show eth0 | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
    must $IP neigh replace 192.0.2.1 lladdr "$omac" dev up0 nud permanent
    must $TC qdisc add dev up0 root tbf rate 8kbit burst 1600 limit 1
    pinger -s 1000 -i 0.2 203.0.113.1
    follow4 qdisc_drop
    stop_pinger
    must $TC qdisc del dev up0 root
    must $IP neigh del 192.0.2.1 dev up0

    must $NFT delete table ip ktnat
    pinger -i 0.5 203.0.113.1
    follow4 no_masquerade
    stop_pinger
    masquerade_on
}

teardown() {
    kill "$SIPID" 2>/dev/null
    wait "$SIPID" 2>/dev/null
    for ns in "$G" "$W" "$O"; do
        $IP netns del "$ns" 2>/dev/null
    done
}

caps
setup
cases
teardown
say "done"
