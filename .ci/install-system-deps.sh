#!/usr/bin/env bash
# Install what the lab and the end-to-end tests need on a fresh Debian/Ubuntu machine, then
# pre-build the user-mode-linux cache (meshd/lab/uml.py). Needs root. Idempotent: packages
# already present are not touched and apt-get update runs only when something is missing.
#
#   iproute2       ip, ip netns, ip -batch: every lab namespace and link
#   iputils-ping   ping matrices
#   nftables       nft: fault injection (meshd/lab/faults.py), the data-plane filter
#   tcpdump        captures proving traffic went through a tunnel (and, for wireguard, that
#                  nothing crosses the underlay in the clear: tests/e2e/test_wireguard.py)
#   util-linux     unshare and nsenter: each lab host's wireguard daemon in a mount namespace
#                  of its own, `wg` run inside it (essential on Debian; listed to say why)
#   procps         sysctl and ps, for looking around a kept lab
#   kmod           depmod for the UML cache, modprobe in the guest (busybox insmod: fallback)
#   busybox-static "busybox poweroff -f": a synchronous power-off for the UML guest
#   openssl        the CLI tests check that `openssl x509 -text`/`openssl crl -text` read meshd's
#                  certificates and CRLs
#   containernetworking-plugins
#                  the CNI bridge and host-local plugins (/usr/lib/cni) the flannel CNI plugin
#                  delegates to (tests/e2e/test_cni.py, `meshd lab --cni`; the flannel plugin
#                  itself is not packaged: see docs/kubernetes.md)
#   wireguard-go wireguard-tools
#                  the userspace WireGuard device (this kernel has no wireguard module) and `wg`:
#                  tests/integration/test_wireguard_kernel.py, tests/e2e/test_wireguard.py,
#                  `meshd lab --backend wireguard`, benchmarks/bench_wireguard.py
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "install-system-deps: needs root" >&2
    exit 1
fi

pkgs=(iproute2 iputils-ping nftables tcpdump util-linux procps kmod openssl
      containernetworking-plugins wireguard-go wireguard-tools)
# Any busybox will do (the dynamic one runs in the guest too, the root is shared); installing
# busybox-static over an existing busybox would replace it.
command -v busybox >/dev/null 2>&1 || pkgs+=(busybox-static)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-system-deps: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The UML kernel + modules cache ($MESHD_UML_CACHE, default /var/cache/meshd/uml); a no-op when
# already built. It needs only the standard library, so any python3 will do.
py=.venv/bin/python
[ -x "$py" ] || py=python3
"$py" -m meshd.lab.uml build
