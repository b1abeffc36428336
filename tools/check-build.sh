#!/usr/bin/env bash
# Build the collection tarball and check that it ships the collection and nothing of
# the development tree (tests, molecule, benchmarks, tools, CI).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/lib.sh
. "$repo/tools/lib.sh"
use_toolchain
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
ansible-galaxy collection build --force --output-path "$out" "$repo" >/dev/null
tarball=$(ls "$out"/tradingbot-ops-*.tar.gz)
listing=$(tar -tzf "$tarball")
forbidden=$(grep -E '^(tests|molecule|benchmarks|tools|\.ci|\.config|\.git)/' <<<"$listing" || true)
[ -z "$forbidden" ] || die "the tarball ships development files: $(head -n 5 <<<"$forbidden" | tr '\n' ' ')"
for required in MANIFEST.json meta/runtime.yml README.md plugins/module_utils/ roles/ playbooks/site.yml; do
  grep -qE "^${required}" <<<"$listing" || die "the tarball lacks $required"
done
log "$(basename "$tarball"): $(wc -l <<<"$listing") entries, $(du -h "$tarball" | cut -f1), no development files"

# The execution environment installs exactly this tarball: its name must match, and
# ansible-builder must accept the definition and write a build context.
ee="$repo/meta/execution-environment.yml"
grep -q "$(basename "$tarball")" "$ee" || die "meta/execution-environment.yml does not reference $(basename "$tarball")"
mkdir -p "$out/meta"
cp "$ee" "$out/meta/"
ansible-builder create --file "$out/meta/execution-environment.yml" --context "$out/context" >/dev/null
[ -f "$out/context/_build/galaxy/$(basename "$tarball")" ] || die "ansible-builder's context lacks the collection tarball"
log "execution environment: ansible-builder create wrote $(ls "$out/context" | tr '\n' ' ')"
