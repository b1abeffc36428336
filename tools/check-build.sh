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

# The execution environment installs this tarball as tools/ee.sh stages it (.ee-build/, beside
# meta/): ansible-builder must accept the definition and put it in the build context.
# tools/ee.sh test builds the image and runs site.yml from it.
ee="$repo/meta/execution-environment.yml"
mkdir -p "$out/meta" "$out/.ee-build"
cp "$ee" "$out/meta/"
cp "$tarball" "$out/.ee-build/tradingbot-ops.tar.gz"
ansible-builder create --file "$out/meta/execution-environment.yml" --context "$out/context" >/dev/null 2>&1
[ -f "$out/context/_build/collections/tradingbot-ops.tar.gz" ] || die "ansible-builder's context lacks the collection tarball"
grep -q 'collections/tradingbot-ops.tar.gz' "$out/context/_build/requirements.yml" ||
  die "the EE's galaxy requirements do not install collections/tradingbot-ops.tar.gz"
log "execution environment: ansible-builder create wrote $(ls "$out/context" | tr '\n' ' ')"
