#!/bin/sh
# PID 1 of meshd's user-mode-linux guest (see meshd/lab/uml.py, which boots it).
#
# The guest's root filesystem is the HOST's "/" (UML hostfs, read-only), so every host tool and
# the project's venv run here unchanged, but against the guest kernel, which has ipip & co.
# Parameters come from the kernel command line (unknown key=value words become init's env):
#   meshd_moddir  host dir with the guest's module tree (lib/modules/<release>), "release",
#                 "names" (for modprobe) and "load-order" (.ko paths, deps first, for insmod)
#   meshd_cmd     shell script to run (a host path outside /tmp and /run: those are tmpfs here)
#   meshd_ro      optional ':'-separated host dirs under /tmp, /run, ... to show read-only again
#                 (the project or its venv may live there; the tmpfs below would hide them)
#   meshd_rw      optional ':'-separated host dirs to mount read-write at the same path
#   meshd_nonce   per-run token in the result markers, so command output cannot fake them
# Output: "MESHD-UML-BEGIN <nonce>", the command's output, "MESHD-UML-END <nonce> rc=<N>".
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb LANG=C.UTF-8
# The root is read-only: writing .pyc files would only fail, slowly.
export PYTHONDONTWRITEBYTECODE=1

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm 2>/dev/null
mount -t devpts devpts /dev/pts 2>/dev/null
# Writable scratch space on top of the read-only root; "ip netns" needs /run/netns.
for d in /run /tmp /var/tmp /dev/shm; do mount -t tmpfs tmpfs "$d"; done
mkdir -p /run/netns /run/lock
hostname meshd-uml 2>/dev/null

# share MODE DIR...: mount host dirs at the same path (hostfs), after the tmpfs mounts above.
share() {
    mode=$1; shift
    for d in "$@"; do
        mkdir -p "$d" 2>/dev/null
        mount -t hostfs -o "$mode,$d" hostfs "$d" || echo "MESHD-UML: cannot mount $d ($mode)"
    done
}
old_ifs=$IFS; IFS=:
# shellcheck disable=SC2086 # split on ':' on purpose
share ro ${meshd_ro:-}
# shellcheck disable=SC2086
share rw ${meshd_rw:-}
IFS=$old_ifs

# Modules: the host root has no /lib/modules tree for the guest kernel, so they come from the
# cache ($meshd_moddir/lib/modules/<release>, indexed by depmod on the host). One modprobe loads
# them all with their dependencies (each exec costs ~0.1 s here); without kmod, or if that fails,
# insmod them one by one in dependency order (busybox's insmod will do).
loaded=no
if [ -r "${meshd_moddir:-}/release" ] && command -v modprobe >/dev/null 2>&1; then
    read -r release < "$meshd_moddir/release"
    read -r names < "$meshd_moddir/names"
    # shellcheck disable=SC2086 # a list of names
    if modprobe -d "$meshd_moddir" -S "$release" -a $names; then
        loaded=yes
        # Kernel autoloading (request_module: "ip link add type X", ...) from the same tree.
        printf '#!/bin/sh\nexec %s -d %s -S %s "$@"\n' "$(command -v modprobe)" \
            "$meshd_moddir" "$release" > /run/meshd-modprobe
        chmod 755 /run/meshd-modprobe
        echo /run/meshd-modprobe > /proc/sys/kernel/modprobe
    fi
fi
if [ $loaded = no ]; then
    insmod=insmod
    command -v insmod >/dev/null 2>&1 || insmod="busybox insmod"
    if [ -r "${meshd_moddir:-}/load-order" ]; then
        while read -r ko; do
            $insmod "$meshd_moddir/$ko" || echo "MESHD-UML: insmod $ko failed"
        done < "$meshd_moddir/load-order"
    else
        echo "MESHD-UML: no module list in '${meshd_moddir:-}'"
    fi
fi

echo "MESHD-UML-BEGIN $meshd_nonce"
rc=127
if [ -r "${meshd_cmd:-}" ]; then
    if [ -x /bin/bash ]; then /bin/bash "$meshd_cmd"; else /bin/sh "$meshd_cmd"; fi
    rc=$?
else
    echo "MESHD-UML: command script '${meshd_cmd:-}' not readable"
fi
echo "MESHD-UML-END $meshd_nonce rc=$rc"
sync
# reboot(2) from a static binary is synchronous: nothing of the host root is still executing
# while the kernel shuts down. sysrq-o is the fallback without busybox (asynchronous, noisier).
busybox poweroff -f 2>/dev/null
echo o > /proc/sysrq-trigger
while :; do sleep 1; done
