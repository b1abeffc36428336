#!/usr/bin/env bash
# The main job on an embedded default: boot a local systemd host (podman container
# "tradingbot-demo", Debian 12) and run playbooks/site.yml against it with the demo app.
#
# Usage: tools/demo.sh            re-running converges the same host again
#        tools/demo.sh --destroy  removes the demo host
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/lib.sh
. "$repo/tools/lib.sh"
name=tradingbot-demo
image=localhost/tradingbot-test-debian-bookworm

if [ "${1:-}" = --destroy ]; then
  podman rm -f "$name" >/dev/null 2>&1 || true
  log "removed $name"
  exit 0
fi

bash "$repo/tools/bootstrap.sh" >/dev/null
bash "$repo/tools/test-hosts.sh" bookworm
use_toolchain

if [ "$(podman inspect --format '{{ .State.Running }}' "$name" 2>/dev/null)" != true ]; then
  podman rm -f "$name" >/dev/null 2>&1 || true
  log "starting $name"
  # Same options as the molecule platforms (.config/molecule/config.yml); see docs/test-hosts.md.
  podman run -d --name "$name" --hostname "$name" --systemd=always --cap-add SYS_ADMIN \
    --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
    -v /sys/fs/cgroup/memory:/sys/fs/cgroup/memory:rw "$image" >/dev/null
fi
podman exec "$name" systemctl is-system-running --wait >/dev/null || true

cd "$repo"
ansible -i tools/demo-inventory.yml all -m ansible.builtin.ping
ansible-playbook -i tools/demo-inventory.yml playbooks/site.yml

cat <<EOT

The demo host is up: podman container '$name' (Debian 12, systemd as PID 1).
  shell:        podman exec -it $name bash
  service:      podman exec $name systemctl status tradingbot
  health:       podman exec $name python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/health').read().decode())"
  files:        /opt/tradingbot/{data,logs,backups}, venv /opt/tradingbot/venv
  backup now:   podman exec $name systemctl start tradingbot-backup.service
  ansible:      ANSIBLE_COLLECTIONS_PATH=$ANSIBLE_COLLECTIONS_PATH $venv/bin/ansible -i tools/demo-inventory.yml all -m ping
  remove it:    tools/demo.sh --destroy
EOT
