#!/usr/bin/env bash
# Installs what the non-QEMU tests need on a fresh Debian bookworm machine (idempotent):
#   - libssl-dev: libcrypto for the sample vendor plug-in (accel-hw/sample-plugin), built by
#     tests/driver_plugin.rs with the system C compiler
#   - iproute2: `ip netns` / TAP / veth for the fast-path tests in network namespaces
#   - scapy + cryptography (PyPI): the independent ESP (RFC 4303/4106) peer of the fast-path tests
#   - dpdk-dev: dpdk-testpmd, whose virtio-user PMD is the independent peer on vhost-user
#     uplinks (tests/net_vhost_uplink.rs) and the reference in benches/peers.sh; it
#     needs 2 MiB hugepages, reserved and mounted here (the test tops them up if it can)
#   - curl: the real HTTP client of the management-API tests (tests/operator_*.rs)
#   - libvirt-clients + libxml2-utils: virt-xml-validate (and the xmllint it runs) for
#     docs/libvirt-vnf.xml (tests/service_files.rs)
#   - prometheus_client (PyPI): the independent parser of GET /metrics in the tests
set -euo pipefail
log() { echo "install-deps(ci): $*" >&2; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

pkgs=()
[ -e /usr/include/openssl/evp.h ] || pkgs+=(libssl-dev)
command -v ip >/dev/null 2>&1 || pkgs+=(iproute2)
command -v dpdk-testpmd >/dev/null 2>&1 || pkgs+=(dpdk-dev)
command -v curl >/dev/null 2>&1 || pkgs+=(curl)
command -v virt-xml-validate >/dev/null 2>&1 || pkgs+=(libvirt-clients)
command -v xmllint >/dev/null 2>&1 || pkgs+=(libxml2-utils)
if [ ${#pkgs[@]} -gt 0 ]; then
    log "apt-get install ${pkgs[*]}"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
if [ "${free:-0}" -lt 512 ]; then
    log "reserving 512 hugepages"
    echo $(( $(cat /proc/sys/vm/nr_hugepages) + 512 - ${free:-0} )) | $SUDO tee /proc/sys/vm/nr_hugepages >/dev/null
fi
if ! grep -q hugetlbfs /proc/mounts; then
    $SUDO mkdir -p /dev/hugepages
    $SUDO mount -t hugetlbfs nodev /dev/hugepages
fi
grep -E "HugePages_(Total|Free)" /proc/meminfo >&2

if ! python3 -c 'import scapy, cryptography' 2>/dev/null; then
    log "pip install scapy cryptography"
    python3 -m pip install --quiet --disable-pip-version-check 'scapy>=2.5' cryptography
fi
python3 -c 'import scapy; print("install-deps(ci): scapy", scapy.VERSION)' >&2

if ! python3 -c 'import prometheus_client' 2>/dev/null; then
    log "pip install prometheus_client"
    python3 -m pip install --quiet --disable-pip-version-check prometheus_client
fi
