#!/usr/bin/env bash
# Install what the QEMU + Linux guest harness (tests/qemu_guest.rs) needs on a
# Debian bookworm machine that already has Rust, gcc and python3.
#
#   - qemu-system-x86 from bookworm-backports (QEMU 10: cryptodev-vhost-user with
#     the QEMU 9+ CREATE_CRYPTO_SESSION layout, chardev reconnect-ms)
#   - cpio (builds the guest initramfs), openssl (independent AES-CBC oracle)
#   - libc6-dev (static libc for the guest test program)
#
# The guest kernel and busybox are NOT installed: tests/qemu/build-guest.sh only
# downloads their .debs (apt-get download) and unpacks them under target/.
#
# Idempotent: does nothing when everything is already there. Quiet on success,
# loud on failure. Needs root (or sudo).
set -euo pipefail

log() { echo "install-deps(qemu): $*" >&2; }
die() { echo "install-deps(qemu): ERROR: $*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "must run as root (or have sudo)"
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

qemu_major() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || { echo 0; return; }
    qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p' | head -n1
}

need_pkgs=()
[ "$(qemu_major)" -ge 10 ] 2>/dev/null || need_pkgs+=(qemu-system-x86)
command -v cpio >/dev/null 2>&1 || need_pkgs+=(cpio)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need_pkgs+=(libc6-dev)
command -v gcc >/dev/null 2>&1 || need_pkgs+=(gcc)
# build-guest.sh uses apt-get download + dpkg -x; both are part of any Debian.
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script targets Debian bookworm"

bpo_list=/etc/apt/sources.list.d/bookworm-backports.list
have_bpo() {
    grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null
}
added_bpo=0
if ! have_bpo; then
    log "adding bookworm-backports to $bpo_list"
    echo 'deb http://deb.debian.org/debian bookworm-backports main' | $SUDO tee "$bpo_list" >/dev/null
    added_bpo=1
fi

# The guest kernel .deb must be downloadable by build-guest.sh too: refresh the
# lists when it is not known yet (fresh machine, or lists never fetched).
kernel_pkg=linux-image-6.1.0-56-amd64
if [ "${#need_pkgs[@]}" -gt 0 ] || [ "$added_bpo" = 1 ] \
   || ! apt-cache show "$kernel_pkg" >/dev/null 2>&1 \
   || ! apt-cache show busybox-static >/dev/null 2>&1; then
    log "apt-get update"
    if ! out=$($SUDO apt-get update -q 2>&1); then
        echo "$out" >&2
        die "apt-get update failed"
    fi
fi

if [ "${#need_pkgs[@]}" -gt 0 ]; then
    log "installing: ${need_pkgs[*]}"
    if ! out=$($SUDO apt-get install -y -q --no-install-recommends \
                 -t bookworm-backports "${need_pkgs[@]}" 2>&1); then
        echo "$out" >&2
        die "apt-get install ${need_pkgs[*]} failed"
    fi
fi

# Verify, loudly.
major=$(qemu_major)
[ "${major:-0}" -ge 10 ] || die "qemu-system-x86_64 is version ${major:-none}, need >= 10 (bookworm-backports)"
for t in cpio openssl gcc dpkg apt-get; do
    command -v "$t" >/dev/null 2>&1 || die "$t still missing after install"
done
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || die "static libc (libc6-dev) missing"
apt-cache show "$kernel_pkg" >/dev/null 2>&1 || die "$kernel_pkg not in the apt lists: build-guest.sh cannot download it"
apt-cache show busybox-static >/dev/null 2>&1 || die "busybox-static not in the apt lists"
log "ok: $(qemu-system-x86_64 --version | head -n1)"
