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
# ansible-test bootstraps pip in its venvs from a script on a host this network cannot
# reach; give it a stand-in under the name it looks for.
ansible_test_dir=$("$venv/bin/python" -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')
pip_version=$(grep -oP "pip='\\K[0-9.]+" "$ansible_test_dir/_internal/python_requirements.py" | head -n1)
[ -n "$pip_version" ] || die "cannot tell which pip ansible-test bootstraps"
mkdir -p "$HOME/.ansible/test/cache"
cp "$repo/tools/ansible-test-get-pip.py" "$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"

# A private copy per run, so that runs from several checkouts never share a tree.
tree_root=$(mktemp -d "$cache_dir/sanity.XXXXXX")
trap 'rm -rf "$tree_root"' EXIT
tree="$tree_root/ansible_collections/tradingbot/ops"
mkdir -p "$tree"
(cd "$repo" && git ls-files -co --exclude-standard -z) | rsync -a --from0 --files-from=- "$repo/" "$tree/"
cd "$tree"
# Not exec: the trap must remove the copy afterwards.
PATH="$venv/bin:$PATH" ansible-test sanity --python "$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" --color no "$@"
