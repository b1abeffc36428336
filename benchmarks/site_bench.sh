#!/usr/bin/env bash
# Wall time of playbooks/site.yml on fresh podman systemd hosts: benchmarks/site_bench.py on the
# project's toolchain and test-host image. Not run by CI.
#
# Usage: benchmarks/site_bench.sh [--quick] [--hosts 1,3,5] [--pairs N] [--warmup N]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/lib.sh
. "$repo/tools/lib.sh"

bash "$repo/tools/bootstrap.sh" >/dev/null
bash "$repo/tools/test-hosts.sh" bookworm
use_toolchain
exec python3 "$repo/benchmarks/site_bench.py" "$@"
