#!/usr/bin/env bash
# Build the dpacc test guest: a stock Debian kernel + a busybox initramfs that runs
# tests/qemu/guest/afalg_test.c against the virtio-crypto device.
#
#   tests/qemu/build-guest.sh [OUTDIR]        (default: <workspace>/target/qemu-guest)
#
# Produces OUTDIR/vmlinuz and OUTDIR/initramfs.cpio.gz. The .debs are cached in
# OUTDIR/debs (downloaded with `apt-get download`, never installed); a stamp of every
# input lets a second run with unchanged inputs return at once.
# Needs: apt-get, dpkg, cpio, gzip, gcc with static libc, objcopy (binutils).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
workspace="$(cd "$here/../.." && pwd)"
outdir="${1:-$workspace/target/qemu-guest}"
kernel_pkg="${DPACC_GUEST_KERNEL_PKG:-linux-image-6.1.0-56-amd64}"
# The virtio-crypto + AF_ALG stack (skcipher for the virtio-crypto tests; aead, hash and the
# kernel's own gcm/ctr/sha512/chacha20poly1305 for the AF_ALG driver test), virtio_net, and
# uio + uio_pci_generic (the userspace virtio-pci test); their own dependencies are added below.
wanted_modules=(virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
                crypto_engine virtio_crypto af_alg algif_skcipher
                algif_aead algif_hash ctr gcm ghash_generic sha512_generic
                chacha_generic poly1305_generic chacha20poly1305 virtio_net
                uio uio_pci_generic)

log() { echo "build-guest: $*" >&2; }
die() { echo "build-guest: ERROR: $*" >&2; exit 1; }

for t in apt-get dpkg cpio gzip gcc objcopy sha256sum; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found (run tests/qemu/install-deps.sh)"
done

mkdir -p "$outdir/debs"
outdir="$(cd "$outdir" && pwd)"
debs="$outdir/debs"

# 1. The .debs (cached).
fetch() {
    local pkg="$1"
    if compgen -G "$debs/${pkg}_*.deb" >/dev/null; then
        return 0
    fi
    log "apt-get download $pkg"
    local out
    if ! out=$(cd "$debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg" 2>&1); then
        echo "$out" >&2
        die "apt-get download $pkg failed (run tests/qemu/install-deps.sh, which refreshes the apt lists)"
    fi
}
fetch "$kernel_pkg"
fetch busybox-static
kernel_deb="$(ls -1 "$debs/${kernel_pkg}"_*.deb | sort -V | tail -n1)"
busybox_deb="$(ls -1 "$debs"/busybox-static_*.deb | sort -V | tail -n1)"

# 2. Up to date already?
stamp="$(
    {
        sha256sum "$kernel_deb" "$busybox_deb" "$here/build-guest.sh" "$here/guest/init" \
                  "$here/guest/afalg_test.c" | awk '{print $1}'
        gcc --version | head -n1
        echo "${wanted_modules[*]}"
    } | sha256sum | awk '{print $1}'
)"
if [ -f "$outdir/stamp" ] && [ "$(cat "$outdir/stamp")" = "$stamp" ] \
   && [ -s "$outdir/vmlinuz" ] && [ -s "$outdir/initramfs.cpio.gz" ]; then
    exit 0
fi
rm -f "$outdir/stamp"

work="$outdir/work"
rm -rf "$work"
mkdir -p "$work/kernel" "$work/busybox" "$work/root"
log "unpacking $(basename "$kernel_deb") and $(basename "$busybox_deb")"
dpkg -x "$kernel_deb" "$work/kernel"
dpkg -x "$busybox_deb" "$work/busybox"

vmlinuz="$(ls -1 "$work"/kernel/boot/vmlinuz-* | head -n1)"
[ -s "$vmlinuz" ] || die "no vmlinuz in $kernel_deb"
moddir="$(ls -1d "$work"/kernel/lib/modules/* | head -n1)"
[ -d "$moddir" ] || die "no lib/modules in $kernel_deb"

# 3. Modules: resolve dependencies from each .ko's .modinfo "depends=" (there is no
#    modules.dep in the .deb and no depmod needed) and order them dependencies-first.
declare -A mod_path=()
while IFS= read -r -d '' ko; do
    name="$(basename "$ko")"
    name="${name%%.ko*}"
    mod_path["${name//-/_}"]="$ko"
done < <(find "$moddir/kernel" -name '*.ko' -print0)

mod_deps() {
    local ko="$1" tmp
    tmp="$(mktemp)"
    objcopy -O binary --only-section=.modinfo "$ko" "$tmp" \
        || die "cannot read .modinfo of $ko (compressed modules are not supported)"
    tr '\0' '\n' <"$tmp" | sed -n 's/^depends=//p' | tr ',' ' '
    rm -f "$tmp"
}

declare -A mod_state=()   # 1 = visiting, 2 = done
load_order=()
visit() {
    local m="${1//-/_}" d deps
    [ "${mod_state[$m]:-0}" = 2 ] && return 0
    [ "${mod_state[$m]:-0}" = 1 ] && die "module dependency cycle at $m"
    [ -n "${mod_path[$m]:-}" ] || die "module $m not found in $kernel_deb (built-in? then drop it from the list)"
    mod_state[$m]=1
    deps="$(mod_deps "${mod_path[$m]}")" || exit 1
    for d in $deps; do
        visit "$d"
    done
    mod_state[$m]=2
    load_order+=("$m")
}
for m in "${wanted_modules[@]}"; do
    visit "$m"
done

root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules,dpacc}
for m in "${load_order[@]}"; do
    cp "${mod_path[$m]}" "$root/lib/modules/$m.ko"
done
printf '%s\n' "${load_order[@]}" >"$root/lib/modules/load-order"

# 4. busybox, /init, the static test program.
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
cp "$here/guest/init" "$root/init"
chmod 0755 "$root/init" "$root/bin/busybox"
log "gcc -static afalg_test.c"
gcc -static -O2 -Wall -Wextra -Werror -o "$root/bin/afalg_test" "$here/guest/afalg_test.c" -lpthread \
    || die "building guest/afalg_test.c failed"

# 5. initramfs (cpio newc + gzip), owned by root in the archive.
(cd "$root" && find . -print0 | LC_ALL=C sort -z \
    | cpio --null -o -H newc -R +0:+0 --quiet) | gzip -6 >"$outdir/initramfs.cpio.gz.tmp"
mv "$outdir/initramfs.cpio.gz.tmp" "$outdir/initramfs.cpio.gz"
cp "$vmlinuz" "$outdir/vmlinuz"
rm -rf "$work"
echo "$stamp" >"$outdir/stamp"
log "built $outdir/vmlinuz and initramfs.cpio.gz ($(du -k "$outdir/initramfs.cpio.gz" | cut -f1) KiB; modules: ${load_order[*]})"
