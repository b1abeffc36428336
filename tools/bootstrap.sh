#!/usr/bin/env bash
# Prepare this machine for the demo and the test suite: host packages, host fixes
# for podman, and the pinned controller venv. Safe to re-run; prints the venv path last.
#
# Usage: tools/bootstrap.sh            (as root, on Debian 12 or 13)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/lib.sh
. "$repo/tools/lib.sh"

host_packages=(
  # iptables: netavark fails with "No such file or directory" without it.
  podman crun conmon fuse-overlayfs netavark aardvark-dns slirp4netns uidmap catatonit
  iptables debootstrap zstd sqlite3 logrotate systemd git rsync postgresql-15 postgresql-client-15
  # Off-site copies: age encrypts on the host, python3-boto3 is the hosts' S3 client (the
  # tests run the host CLI under /usr/bin/python3), rclone is the benchmark's baseline.
  age python3-boto3 rclone
  # pgBackRest: the PostgreSQL WAL archive and point-in-time restore tests.
  pgbackrest
  # time: GNU time gives the benchmarks a child's own peak RSS.
  time
)

install_host_packages() {
  local missing=()
  for pkg in "${host_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing host packages: ${missing[*]}"
  [ "$(id -u)" -eq 0 ] || die "host packages missing (${missing[*]}); run as root"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# crun refuses hybrid cgroups when the v2 hierarchy lists controllers; mount each as v1.
fix_cgroup_controllers() {
  local unified=/sys/fs/cgroup/unified/cgroup.controllers controller
  [ -r "$unified" ] || return 0
  for controller in $(cat "$unified"); do
    mountpoint -q "/sys/fs/cgroup/$controller" && continue
    log "mounting cgroup v1 controller $controller (host fix for crun)"
    mkdir -p "/sys/fs/cgroup/$controller"
    mount -t cgroup -o "$controller" cgroup "/sys/fs/cgroup/$controller"
  done
}

find_controller_python() {
  local candidate root version
  # 3.12 first: the toolchain pins were proven on it.
  for candidate in python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && python_is_new_enough "$candidate"; then
      command -v "$candidate"; return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
    for version in $(ls -1 "$root/versions" 2>/dev/null | sort -V | awk -F. '$1 == 3 && $2 >= 12'); do
      candidate="$root/versions/$version/bin/python3"
      [ -x "$candidate" ] && python_is_new_enough "$candidate" && { echo "$candidate"; return 0; }
    done
  fi
  return 1
}

python_is_new_enough() {
  "$1" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

build_venv() {
  local python key venv
  python=$(find_controller_python) || die "no Python 3.12 or newer found. Install one (e.g. 'apt-get install python3.13' on Debian 13, or 'pyenv install 3.12') and re-run."
  key=$( (cat "$repo/requirements-dev.txt"; "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
  venv="$cache_dir/venv-$key"
  # The stamp is written last, so an interrupted install is redone, not trusted.
  if [ ! -f "$venv/.complete" ]; then
    log "building controller venv $venv with $python"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$repo/requirements-dev.txt" >"$venv.log" 2>&1 ||
      { tail -n 20 "$venv.log" >&2; die "pip install failed (full log: $venv.log)"; }
    touch "$venv/.complete"
  fi
  ln -sfn "$venv" "$cache_dir/venv"
  echo "$venv"
}

# promtool tests the alert rules. Installing Debian's prometheus package would also start a
# Prometheus server, so only its promtool is extracted, keyed on the package version.
install_promtool() {
  local version dir tmp
  version=$(apt-cache policy prometheus 2>/dev/null | awk '$1 == "Candidate:" { print $2 }')
  if [ -z "$version" ] || [ "$version" = "(none)" ]; then
    [ "$(id -u)" -eq 0 ] || die "apt knows no prometheus package; run as root to update the package lists"
    apt-get update -qq
    version=$(apt-cache policy prometheus | awk '$1 == "Candidate:" { print $2 }')
  fi
  [ -n "$version" ] && [ "$version" != "(none)" ] || die "no prometheus package in the apt sources (promtool)"
  dir="$cache_dir/promtool-${version//[^A-Za-z0-9.+-]/_}"
  if [ ! -x "$dir/usr/bin/promtool" ]; then
    log "extracting promtool from prometheus $version"
    tmp=$(mktemp -d)
    chown _apt "$tmp" 2>/dev/null || true  # apt-get download fetches as _apt when it can
    (cd "$tmp" && apt-get download -qq "prometheus=$version") || { rm -rf "$tmp"; die "apt-get download prometheus=$version failed"; }
    rm -rf "$dir" "$dir.part" && mkdir -p "$dir.part"
    dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$dir.part" ./usr/bin/promtool
    rm -rf "$tmp"
    mv "$dir.part" "$dir"
  fi
  mkdir -p "$cache_dir/bin"
  ln -sfn "$dir/usr/bin/promtool" "$cache_dir/bin/promtool"
}

main() {
  mkdir -p "$cache_dir"
  install_host_packages
  fix_cgroup_controllers
  install_promtool
  build_venv
}

main "$@"
