# Shared helpers for the tools/ scripts; sourced, not run.
# shellcheck shell=bash
cache_dir=${TRADINGBOT_OPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tradingbot-ops}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$cache_dir/venv"

# Point ansible at this checkout as tradingbot.ops (the same farm tests/conftest.py uses),
# and put the pinned toolchain first on PATH.
use_toolchain() {
  [ -x "$venv/bin/ansible-playbook" ] || die "no toolchain venv at $venv: run tools/bootstrap.sh first"
  local farm="$repo_root/.pytest_cache/collections"
  mkdir -p "$farm/ansible_collections/tradingbot"
  ln -sfn "$repo_root" "$farm/ansible_collections/tradingbot/ops"
  # ansible-lint copies the collection into ~/.ansible/collections and a stale copy there
  # shadows the checkout; a symlink to the checkout is what it leaves alone.
  local user_collections="$HOME/.ansible/collections/ansible_collections/tradingbot"
  mkdir -p "$user_collections"
  [ -L "$user_collections/ops" ] || rm -rf "$user_collections/ops"
  ln -sfn "$repo_root" "$user_collections/ops"
  export PATH="$venv/bin:$cache_dir/bin:$PATH"
  # Scenarios bind-mount cached binaries from here (molecule/hostloss: the store's weed).
  export TRADINGBOT_OPS_CACHE="$cache_dir"
  export ANSIBLE_COLLECTIONS_PATH="$farm"
  # The pyenv shim breaks interpreter discovery for plays on localhost.
  export TRADINGBOT_CONTROLLER_PYTHON="$venv/bin/python"
}
