#!/usr/bin/env bash
# Run `ansible-test sanity` on the checkout. ansible-test needs the collection under
# ansible_collections/NS/NAME, so the tracked and untracked files are copied there first.
# Usage: tools/sanity.sh [extra ansible-test args]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/lib.sh
. "$repo/tools/lib.sh"
venv="$cache_dir/venv"
[ -x "$venv/bin/ansible-test" ] || die "no venv at $venv: run tools/bootstrap.sh first"
tree="$cache_dir/sanity/ansible_collections/tradingbot/ops"
rm -rf "$tree" && mkdir -p "$tree"
(cd "$repo" && git ls-files -co --exclude-standard -z) | rsync -a --from0 --files-from=- "$repo/" "$tree/"
cd "$tree"
PATH="$venv/bin:$PATH" ansible-test sanity --python "$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" --color no "$@"
