#!/bin/sh
# PID 1 of the liftshift test guest (busybox ash in the initramfs that
# tests/guestimage.py builds; see its design note).  It talks to the host
# only through lines on the serial console that start with "LIFTSHIFT-":
#
#   LIFTSHIFT-READY mode=M uptime=S      /dev/vda is there, modules loaded
#   LIFTSHIFT-CHECKSUM <sha256>           of the first liftshift.mib MiB of /dev/vda
#   LIFTSHIFT-WRITING                     (write) the steady writer has started
#   LIFTSHIFT-WRITES <n>                  (write) 64 KiB writes made until the power button
#   LIFTSHIFT-POWEROFF                    (write) power button seen, writes stopped and flushed
#   LIFTSHIFT-ERROR <what>                anything failed; the guest powers off
#
# Kernel command line: liftshift.mode=write|verify|auto, liftshift.seed=N,
# liftshift.mib=N (dataset size), liftshift.churn_mib=N (size of the region
# after the dataset the steady writer covers, default 8),
# liftshift.pause_ms=N (sleep between steady writes, default 0),
# liftshift.wait=N (seconds to wait for /dev/vda, default 30).
#
# Every disk access bypasses the guest page cache: busybox dd opens the disk
# with O_DIRECT for oflag=direct / iflag=direct and reads into a page-aligned
# (mmap'd) buffer, so each dd block is one request to the virtio disk.  The
# data are rotations of /lib/liftshift/pool picked by an LCG from the seed,
# which guestimage.expected_dataset reproduces on the host.  conv=fsync ends
# a write phase with fsync(), which for a block device is a cache FLUSH.
#
# The power button: QEMU's system_powerdown presses the ACPI power button;
# the kernel's button driver (button.ko) reports it as KEY_POWER on the input
# device named "Power Button", and evdev.ko makes that /dev/input/eventN.  A
# background dd blocks reading one event from it, then creates /run/button;
# the writer checks for that file before every write.
#
# auto (one command line for a VM and for its copy at a migration's
# destination): verify when the disk holds this seed's dataset, else write.
# Write mode records that in a marker block, the 4 KiB right after the churn
# region ("LIFTSHIFT-DATASET seed=S mib=M"), once the dataset is flushed.
#
# It never hangs: every failure powers off, and if even that fails PID 1
# exits, the kernel panics, and panic=-1 with QEMU's -no-reboot ends QEMU.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
POOL=/lib/liftshift/pool
POOL_BYTES=1048576
DISK=/dev/vda

say() { echo "LIFTSHIFT-$*"; }

off() {
    sync
    poweroff -f
    exit 1
}

fail() {
    say "ERROR $*"
    off
}

number() {  # number NAME VALUE: fail unless VALUE is a decimal number
    case $2 in
        '' | *[!0-9]*) fail "liftshift.$1=$2 is not a number" ;;
    esac
}

# next_x: one step of the LCG in $x (31 bits: the products stay below 2^62)
next_x() { x=$(( (x * 1103515245 + 12345) % 2147483648 )); }

mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
mkdir -p /run /tmp

mode= seed=0 mib=16 churn_mib=8 pause_ms=0 wait_s=30
for arg in $(cat /proc/cmdline); do
    case $arg in
        liftshift.mode=*) mode=${arg#*=} ;;
        liftshift.seed=*) seed=${arg#*=}; number seed "$seed" ;;
        liftshift.mib=*) mib=${arg#*=}; number mib "$mib" ;;
        liftshift.churn_mib=*) churn_mib=${arg#*=}; number churn_mib "$churn_mib" ;;
        liftshift.pause_ms=*) pause_ms=${arg#*=}; number pause_ms "$pause_ms" ;;
        liftshift.wait=*) wait_s=${arg#*=}; number wait "$wait_s" ;;
    esac
done
seed=$((seed % 2147483648))

# Modules in dependency order (the build left out the ones built in).
while read -r name; do
    err=$(insmod "/lib/modules/$name.ko" 2>&1) || [ -d "/sys/module/$name" ] || fail "insmod $name: $err"
done < /lib/liftshift/modules

i=0
while [ ! -b $DISK ]; do
    i=$((i + 1))
    [ $i -gt $((wait_s * 10)) ] && fail "no $DISK after ${wait_s} s"
    usleep 100000
done

read -r uptime _ < /proc/uptime
say "READY mode=$mode uptime=$uptime"

power_button() {  # the /dev/input/eventN of the ACPI power button
    for dev in /sys/class/input/input*; do
        [ "$(cat "$dev/name" 2>/dev/null)" = "Power Button" ] || continue
        for ev in "$dev"/event*; do
            [ -e "$ev" ] && [ -c "/dev/input/${ev##*/}" ] && { echo "/dev/input/${ev##*/}"; return 0; }
        done
    done
    return 1
}

rotations() {  # rotations COUNT: COUNT MiB of dataset to stdout (x = seed)
    x=$seed n=0
    while [ $n -lt "$1" ]; do
        next_x
        o=$((x >> 11))
        dd if=$POOL bs=64k iflag=skip_bytes skip=$o 2>/dev/null || return 1
        dd if=$POOL bs=64k iflag=count_bytes count=$o 2>/dev/null || return 1
        n=$((n + 1))
    done
}

checksum() {  # LIFTSHIFT-CHECKSUM of the dataset, read back with O_DIRECT
    set -o pipefail
    sum=$(dd if=$DISK bs=1M count="$mib" iflag=direct 2>/dev/null | sha256sum) || fail "reading the dataset back"
    set +o pipefail
    sum=${sum%% *}
    [ ${#sum} -eq 64 ] || fail "sha256sum printed '$sum'"
    say "CHECKSUM $sum"
}

write_dataset() {
    set -o pipefail
    out=$(rotations "$mib" | dd of=$DISK bs=1M count="$mib" iflag=fullblock oflag=direct conv=notrunc,fsync 2>&1) \
        || fail "writing the dataset: $out"
    set +o pipefail
    case $out in
        *"$mib+0 records out"*) ;;
        *) fail "writing the dataset: $out" ;;
    esac
}

churn() {  # 64 KiB O_DIRECT writes at LCG-picked slots after the dataset until /run/button
    x=$((seed ^ 1431655765)) n=0 slots=$((churn_mib * 16)) base=$((mib * 16))
    while [ ! -e /run/button ]; do
        next_x
        slot=$((base + (x >> 8) % slots))
        src=$(((x >> 4) % (POOL_BYTES - 65536)))
        dd if=$POOL of=$DISK bs=64k count=1 iflag=skip_bytes skip=$src seek=$slot \
            oflag=direct conv=notrunc 2>/dev/null || fail "write #$n to 64 KiB block $slot"
        n=$((n + 1))
        [ "$pause_ms" -gt 0 ] && usleep $((pause_ms * 1000))
    done
    dd if=/dev/null of=$DISK count=0 conv=notrunc,fsync 2>/dev/null || fail "flushing $DISK"
    say "WRITES $n"
}

marker_text() { echo "LIFTSHIFT-DATASET seed=$seed mib=$mib"; }
marker_block=$(((mib + churn_mib) * 256))  # in 4 KiB blocks

write_marker() {
    marker_text > /tmp/marker
    dd if=/tmp/marker of=/tmp/marker.blk bs=4096 count=1 conv=sync 2>/dev/null || fail "building the marker"
    dd if=/tmp/marker.blk of=$DISK bs=4096 seek=$marker_block oflag=direct conv=notrunc,fsync 2>/dev/null \
        || fail "writing the dataset marker"
}

if [ "$mode" = auto ]; then
    found=$(dd if=$DISK bs=4096 skip=$marker_block count=1 iflag=direct 2>/dev/null | head -n 1)
    if [ "$found" = "$(marker_text)" ]; then mode=verify; else mode=write; fi
    say "MODE $mode"
fi

case $mode in
    write)
        [ "$churn_mib" -gt 0 ] || fail "liftshift.churn_mib must be at least 1"
        button=$(power_button) || fail "no ACPI power button input device"
        # Listen before anything else, so that a press at any later time counts.
        (dd if="$button" of=/dev/null bs=24 count=1 2>/dev/null; : > /run/button) &
        write_dataset
        write_marker
        checksum
        say WRITING
        churn
        say POWEROFF
        off
        ;;
    verify)
        checksum
        off
        ;;
    *)
        fail "unknown liftshift.mode '$mode' (write, verify or auto)"
        ;;
esac
