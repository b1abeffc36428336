#!/usr/bin/env bash
# Build the local podman images that molecule and the demo boot as systemd hosts:
# localhost/tradingbot-test-debian-<suite>, from a debootstrapped Debian rootfs.
#
# The packed rootfs is cached outside the checkout, keyed on the suite, the package
# list, this recipe and the host's CA certificates; a warm run only re-imports (or
# finds the image already present) and takes seconds.
#
# Usage: tools/test-hosts.sh [SUITE ...]     (default: bookworm trixie; built side by side)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/lib.sh
. "$repo/tools/lib.sh"

# Bump when the recipe changes in a way the inputs below do not capture.
recipe_version=3
image_packages=systemd,systemd-sysv,python3,python3-venv,python3-apt,dbus,logrotate,sudo,ca-certificates,sqlite3,gzip,zstd,procps,iproute2,cron
# Units that make no sense in a container; masked so the boot reaches `running`.
masked_units=(
  getty@tty1.service console-getty.service systemd-udevd.service systemd-udev-trigger.service
  systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount
  systemd-remount-fs.service systemd-firstboot.service
)

debian_mirror() {
  local uri
  uri=$(grep -rhoE '^(URIs:|deb) +(\[[^]]*\] +)?https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
    grep -oE 'https?://[^ ]+' | head -n1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

# cache_key SUITE [PACKAGES]: the key of a rootfs built from this recipe.
cache_key() {
  local suite=$1 packages=${2:-$image_packages}
  {
    echo "$suite $recipe_version $packages ${masked_units[*]}"
    cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true
  } | sha256sum | cut -c1-16
}

# build_rootfs_tarball SUITE TARBALL [PACKAGES]
build_rootfs_tarball() {
  local suite=$1 tarball=$2 packages=${3:-$image_packages} rootfs unit
  rootfs=$(mktemp -d "$cache_dir/rootfs-$suite.XXXXXX")
  cleanup_dirs+=("$rootfs")
  log "debootstrap $suite (about 80 s)"
  debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$(debian_mirror)" >"$rootfs.log" 2>&1 ||
    { tail -n 20 "$rootfs.log" >&2; die "debootstrap $suite failed (full log: $rootfs.log)"; }
  rm -f "$rootfs.log"
  # An intercepting HTTPS proxy may sit between the host and PyPI; trust what the host trusts.
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
  fi
  : >"$rootfs/etc/machine-id"
  mkdir -p "$rootfs/etc/systemd/system"
  for unit in "${masked_units[@]}"; do
    ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
  done
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" --numeric-owner -cf - . | zstd -q -T0 -3 -o "$tarball.tmp"
  mv "$tarball.tmp" "$tarball"
  rm -rf "$rootfs"
}

# ensure_image SUITE [IMAGE] [PACKAGES]: a systemd host image, rebuilt when its key changes.
ensure_image() {
  local suite=$1 image=${2:-localhost/tradingbot-test-debian-$1} packages=${3:-$image_packages} key tarball
  key=$(cache_key "$suite" "$packages")
  tarball="$cache_dir/images/debian-$suite-$key.tar.zst"
  if [ "$(podman image inspect --format '{{ index .Config.Labels "tradingbot.cache-key" }}' "$image" 2>/dev/null)" = "$key" ]; then
    log "$image is current ($key)"
    return 0
  fi
  mkdir -p "$cache_dir/images"
  [ -f "$tarball" ] || build_rootfs_tarball "$suite" "$tarball" "$packages"
  log "importing $image from $tarball"
  zstd -q -dc "$tarball" | podman import \
    --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL=SIGRTMIN+3' --change 'ENV container=podman' \
    --change "LABEL tradingbot.cache-key=$key" - "$image" >/dev/null
}

cleanup_dirs=()
trap 'rm -rf "${cleanup_dirs[@]}"' EXIT

# in_parallel COMMAND...: each word a function to run beside the others; fails when any does.
# A cold build spends most of its time on the mirror and the disk, so two at once save time.
in_parallel() {
  local pids=() pid failed=0 job
  for job in "$@"; do
    $job &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
  done
  [ $failed -eq 0 ] || die "an image failed to build (its lines above say why)"
}

main() {
  local suites=("$@") suite jobs=()
  [ ${#suites[@]} -gt 0 ] || suites=(bookworm trixie)
  command -v podman >/dev/null || die "podman is missing: run tools/bootstrap.sh first"
  for suite in "${suites[@]}"; do
    jobs+=("ensure_image $suite")
  done
  in_parallel "${jobs[@]}"
}

# tools/ee.sh sources this file for the recipe; run, it builds the test hosts.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
