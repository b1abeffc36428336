#!/usr/bin/env bash
# Wall time of playbooks/site.yml (with the demo app) on local podman systemd hosts:
#   1 host:  first converge vs the idempotent re-run   (target: re-run <= 40% of first)
#   N hosts: the same at once, forks >= N               (target: N hosts <= 2x one host)
# Each host is a fresh container from tools/test-hosts.sh's Debian 12 image. Not run by CI.
#
# Usage: benchmarks/site_bench.sh [HOSTS]   (default 5)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/lib.sh
. "$repo/tools/lib.sh"
hosts=${1:-5}
image=localhost/tradingbot-test-debian-bookworm
prefix=tradingbot-bench
work=$(mktemp -d)

names() { for i in $(seq 1 "$1"); do echo "$prefix-$i"; done; }
cleanup() {
  # shellcheck disable=SC2046
  podman rm -f $(names "$hosts") >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

bash "$repo/tools/bootstrap.sh" >/dev/null
bash "$repo/tools/test-hosts.sh" bookworm
use_toolchain

start_hosts() {
  local name
  for name in $(names "$1"); do
    podman rm -f "$name" >/dev/null 2>&1 || true
    # The molecule platforms' options (.config/molecule/config.yml).
    podman run -d --name "$name" --hostname "$name" --systemd=always --cap-add SYS_ADMIN \
      --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
      -v /sys/fs/cgroup/memory:/sys/fs/cgroup/memory:rw "$image" >/dev/null
  done
  for name in $(names "$1"); do
    podman exec "$name" systemctl is-system-running --wait >/dev/null || true
  done
  {
    echo "all:"
    echo "  vars:"
    echo "    ansible_connection: containers.podman.podman"
    echo "    ansible_python_interpreter: /usr/bin/python3"
    echo "    tradingbot_venv_demo: true"
    echo "  hosts:"
    for name in $(names "$1"); do echo "    $name: {}"; done
  } >"$work/inventory.yml"
}

# Prints the wall time of one site.yml run in seconds; the run's log goes to $work.
run_site() {
  local label=$1 started ended
  started=$(date +%s.%N)
  ANSIBLE_PIPELINING=1 ANSIBLE_FORKS=$((hosts > 5 ? hosts : 5)) \
    ansible-playbook -i "$work/inventory.yml" "$repo/playbooks/site.yml" >"$work/$label.log" 2>&1 ||
    { tail -n 30 "$work/$label.log" >&2; die "site.yml failed ($label)"; }
  ended=$(date +%s.%N)
  echo "$started $ended" | awk '{ printf "%.1f", $2 - $1 }'
}

ratio() { echo "$1 $2" | awk '{ printf "%.2f", $1 / $2 }'; }

start_hosts 1
one_first=$(run_site one-first)
one_rerun=$(run_site one-rerun)
grep -q 'changed=0 ' "$work/one-rerun.log" || log "warning: the 1-host re-run changed something"
podman rm -f "$prefix-1" >/dev/null

start_hosts "$hosts"
many_first=$(run_site many-first)
many_rerun=$(run_site many-rerun)

printf '%-34s %8s s\n' "1 host, first converge" "$one_first" "1 host, idempotent re-run" "$one_rerun" \
  "$hosts hosts, first converge" "$many_first" "$hosts hosts, idempotent re-run" "$many_rerun"
echo "re-run / first converge, 1 host:     $(ratio "$one_rerun" "$one_first")  (target <= 0.40)"
echo "re-run / first converge, $hosts hosts:    $(ratio "$many_rerun" "$many_first")"
echo "$hosts hosts / 1 host, first converge:   $(ratio "$many_first" "$one_first")  (target <= 2.00)"
echo "$hosts hosts / 1 host, re-run:           $(ratio "$many_rerun" "$one_rerun")  (target <= 2.00)"
echo "reproduce: benchmarks/site_bench.sh $hosts"
