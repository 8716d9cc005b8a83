#!/bin/busybox sh
# /init of a kernel-matrix VM (kvmtrace-lab, tests/src/kernels.rs): mounts, loads the modules
# listed in /lib/kt/early (in order: there is no module autoloading here), prints what the kernel
# offers, runs /matrix.sh (the cases) and powers off. Every line that counts starts with "KTM ".
/bin/busybox mkdir -p /bin /proc /sys /dev /run /tmp /var
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
ln -s /run /var/run
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
echo 1 > /proc/sys/kernel/printk
echo "KTM boot $(uname -r) $(cut -d' ' -f1 /proc/uptime)s"
for m in $(cat /lib/kt/early); do
    insmod "/lib/kt/$m.ko" || echo "KTM error: insmod $m"
done
for a in $(cat /proc/cmdline); do
    case "$a" in
        kt.d=*) D="${a#kt.d=}" ;;
        kt.late=*) LATE="$(echo "${a#kt.late=}" | tr , ' ')" ;;
    esac
done
export KT=/kt/kvmtrace SI=/kt/standin BB=/bin/busybox P=kt D LATE
. /matrix.sh
echo "KTM uptime $(cut -d' ' -f1 /proc/uptime)s"
poweroff -f
