#!/usr/bin/env bash
# The execution environment (EE) that AWX / Automation Platform would run the collection in,
# built here and proven by running playbooks/site.yml from inside it.
#
#   build    the base image localhost/tradingbot-ee-base:KEY (a debootstrapped Debian 13 rootfs,
#            the test hosts' recipe with the controller's packages), then the EE image
#            localhost/tradingbot-ee:KEY with ansible-builder from meta/execution-environment.yml.
#            Both are keyed on their inputs: a warm run finds them and builds nothing.
#   test     build, boot a systemd test host with sshd (podman container tradingbot-ee-target on
#            the podman network tradingbot-ee), run site.yml against it over ssh with
#            `ansible-navigator run --ee true`, check that the service is active and /health
#            answers, then run site.yml again and require that it changes nothing. A passed
#            test removes the target; a failed one leaves it running for a look.
#   images   only the two debootstrapped images, base and target, side by side (tools/test.sh
#            makes them in the background while lint and pytest run).
#   destroy  remove the target host and the network.
#
# Usage: tools/ee.sh [build|test|images|destroy]     (default: test)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The rootfs recipe (cache_key, build_rootfs_tarball, ensure_image) and tools/lib.sh.
# shellcheck source=tools/test-hosts.sh
. "$repo/tools/test-hosts.sh"

suite=trixie
ee_definition="$repo/meta/execution-environment.yml"
# The controller side: python3 with Debian's pip (Debian disables ensurepip, the builder's
# own way to get pip), ssh for the managed hosts; sqlite3, pg_dump, gzip and zstd for plays
# that delegate a backup or restore to the controller.
ee_base_packages=python3,python3-venv,python3-pip,ca-certificates,openssh-client,sqlite3,postgresql-client,gzip,zstd
# Collection tarballs land here, where the EE definition's additional_build_files looks.
stage_dir="$repo/.ee-build"
target=tradingbot-ee-target
network=tradingbot-ee
target_image=localhost/tradingbot-ee-target

# The keyed base image; it is also tagged :latest, the name in the EE definition.
ensure_base_image() {
  local key tarball
  key=$(cache_key "$suite" "$ee_base_packages")
  base_image="localhost/tradingbot-ee-base:$key"
  if podman image exists "$base_image"; then
    log "$base_image is current"
  else
    tarball="$cache_dir/images/debian-$suite-ee-base-$key.tar.zst"
    mkdir -p "$cache_dir/images"
    [ -f "$tarball" ] || build_rootfs_tarball "$suite" "$tarball" "$ee_base_packages"
    log "importing $base_image from $tarball"
    zstd -q -dc "$tarball" | podman import --change 'CMD ["/bin/bash"]' - "$base_image" >/dev/null
  fi
  podman tag "$base_image" localhost/tradingbot-ee-base:latest
}

# One pin for ansible-core, the EE's and the dev toolchain's; and every collection that
# galaxy.yml depends on is one that the EE definition installs.
check_definition() {
  local dev ee missing
  dev=$(grep -oE '^ansible-core==[^ ]+' "$repo/requirements-dev.txt")
  ee=$(grep -oE 'ansible-core==[^ "]+' "$ee_definition")
  [ "$dev" = "$ee" ] || die "meta/execution-environment.yml pins $ee but requirements-dev.txt pins $dev"
  missing=$("$venv/bin/python" -c '
import sys, yaml
needed = yaml.safe_load(open(sys.argv[1]))["dependencies"]
listed = {entry["name"].removeprefix("collections/").removesuffix(".tar.gz").replace("-", ".", 1)
          for entry in yaml.safe_load(open(sys.argv[2]))["dependencies"]["galaxy"]["collections"]}
print(" ".join(sorted(set(needed) - listed)))
' "$repo/galaxy.yml" "$ee_definition")
  [ -z "$missing" ] || die "galaxy.yml depends on $missing, which meta/execution-environment.yml does not install"
}

# pack_installed_collection NAMESPACE.NAME DIR: an artifact, built with ansible-galaxy, of the
# copy that the `ansible` package installed in the toolchain venv. That copy has no galaxy.yml
# and lacks files its FILES.json lists (pip leaves them out), so its MANIFEST.json's
# collection_info becomes the galaxy.yml (JSON is YAML) of a fresh build.
pack_installed_collection() {
  local source work
  source=$("$venv/bin/python" -c 'import sys, sysconfig; print(sysconfig.get_paths()["purelib"])')/ansible_collections/${1/.//}
  work=$(mktemp -d "$cache_dir/ee-collection.XXXXXX")
  cleanup_dirs+=("$work")
  rsync -a --exclude __pycache__ --exclude MANIFEST.json --exclude FILES.json "$source/" "$work/"
  "$venv/bin/python" -c '
import json, sys
info = json.load(open(sys.argv[1]))["collection_info"]
json.dump({key: value for key, value in info.items() if value is not None}, open(sys.argv[2], "w"))
' "$source/MANIFEST.json" "$work/galaxy.yml"
  ansible-galaxy collection build --output-path "$2" "$work" >/dev/null
}

# The tarballs that the EE definition's galaxy section names (collections/NAMESPACE-NAME.tar.gz):
# this collection built from the work tree, every other one from the venv's copy.
stage_collections() {
  local collection
  rm -rf "$stage_dir"
  mkdir -p "$stage_dir"
  cleanup_dirs+=("$stage_dir")
  for collection in $("$venv/bin/python" -c '
import sys, yaml
for entry in yaml.safe_load(open(sys.argv[1]))["dependencies"]["galaxy"]["collections"]:
    print(entry["name"].removeprefix("collections/").removesuffix(".tar.gz").replace("-", ".", 1))
' "$ee_definition"); do
    if [ "$collection" = tradingbot.ops ]; then
      ansible-galaxy collection build --output-path "$stage_dir" "$repo" >/dev/null
    else
      pack_installed_collection "$collection" "$stage_dir"
    fi
    mv "$stage_dir/${collection/./-}"-*.tar.gz "$stage_dir/${collection/./-}.tar.gz"
  done
}

# The EE's key: the base image, the definition, the pins, and the files of the work tree
# (committed or not) that the collection artifact takes, i.e. less galaxy.yml's build_ignore.
# Artifacts are not reproducible byte for byte, so the key is taken from their sources.
ee_key() {
  {
    echo "$base_image"
    cat "$ee_definition" "$repo/requirements-dev.txt"
    git -C "$repo" ls-files -co --exclude-standard -z | "$venv/bin/python" -c '
import fnmatch, hashlib, pathlib, sys, yaml
repo = pathlib.Path(sys.argv[1])
ignored = yaml.safe_load((repo / "galaxy.yml").read_text()).get("build_ignore", [])
for path in sorted(filter(None, sys.stdin.read().split("\0"))):
    parts = pathlib.PurePath(path).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    if any(fnmatch.fnmatch(p, pattern) for p in prefixes + list(parts) for pattern in ignored):
        continue
    if (repo / path).is_file():
        print(hashlib.sha256((repo / path).read_bytes()).hexdigest(), path)
' "$repo"
  } | sha256sum | cut -c1-16
}

ensure_ee_image() {
  local context started
  check_definition
  ensure_base_image
  ee_image="localhost/tradingbot-ee:$(ee_key)"
  if podman image exists "$ee_image"; then
    log "$ee_image is current"
    return 0
  fi
  stage_collections
  context=$(mktemp -d "$cache_dir/ee-context.XXXXXX")
  cleanup_dirs+=("$context")
  log "building $ee_image with ansible-builder"
  started=$SECONDS
  ansible-builder build --file "$ee_definition" --context "$context" --container-runtime podman \
    --build-arg EE_BASE_IMAGE="$base_image" --tag "$ee_image" --verbosity 1 >"$context.log" 2>&1 ||
    { tail -n 30 "$context.log" >&2; die "ansible-builder failed (full log: $context.log)"; }
  rm -f "$context.log"
  log "built $ee_image in $((SECONDS - started)) s"
}

# Until systemd has its bus up, `is-system-running --wait` fails at once instead of waiting.
wait_for_boot() {
  local tries=0
  until podman exec "$target" systemctl is-system-running --wait >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ $tries -lt 30 ] || die "$target did not finish booting: $(podman exec "$target" systemctl --failed --no-pager 2>&1)"
    sleep 1
  done
}

# ansible-navigator refuses to start a podman EE without /dev/mqueue, which this host lacks.
ensure_mqueue() {
  mountpoint -q /dev/mqueue && return 0
  log "mounting /dev/mqueue (host fix for ansible-navigator)"
  mkdir -p /dev/mqueue
  mount -t mqueue mqueue /dev/mqueue
}

ensure_target_image() {
  ensure_image "$suite" "$target_image" "$image_packages,openssh-server"
}

start_target() {
  ensure_target_image
  podman network exists "$network" || podman network create "$network" >/dev/null
  podman rm -f "$target" >/dev/null 2>&1 || true
  log "starting $target on network $network"
  # Same options as the molecule platforms (.config/molecule/config.yml).
  podman run -d --name "$target" --hostname "$target" --network "$network" --systemd=always \
    --cap-add SYS_ADMIN --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
    -v /sys/fs/cgroup/memory:/sys/fs/cgroup/memory:rw "$target_image" >/dev/null
  wait_for_boot
  podman exec -i "$target" sh -c 'install -d -m 700 /root/.ssh && cat >/root/.ssh/authorized_keys' <"$run_dir/id_ed25519.pub"
}

# The inventory and the key sit in one directory that navigator mounts into the EE at the
# same path.
prepare_run_dir() {
  run_dir=$(mktemp -d "$cache_dir/ee-run.XXXXXX")
  cleanup_dirs+=("$run_dir")
  ssh-keygen -q -t ed25519 -N '' -C tradingbot-ee-test -f "$run_dir/id_ed25519"
  cat >"$run_dir/inventory.yml" <<EOT
all:
  hosts:
    $target:
      ansible_user: root
      ansible_ssh_private_key_file: $run_dir/id_ed25519
      # A throwaway host on a private network, with a new address each run.
      ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
      ansible_python_interpreter: /usr/bin/python3
      tradingbot_venv_demo: true
EOT
}

# run_site LOG: site.yml from inside the EE; the output goes to LOG and to stderr. Navigator
# passes ANSIBLE_* variables into the EE, and use_toolchain's collection path would point the
# EE at this checkout instead of its own copy. The ulimits are the test hosts': crun cannot
# raise them past the host's hard limits.
run_site() {
  (cd "$run_dir" && env -u ANSIBLE_COLLECTIONS_PATH ansible-navigator run "$repo/playbooks/site.yml" -i "$run_dir/inventory.yml" \
    --mode stdout --execution-environment true --container-engine podman \
    --execution-environment-image "$ee_image" --pull-policy never \
    --container-options="--network=$network" --container-options=--ulimit=nofile=20000:20000 \
    --container-options=--ulimit=nproc=32768:32768 --set-environment-variable ANSIBLE_PIPELINING=true \
    --playbook-artifact-enable false --log-file "$run_dir/navigator.log") 2>&1 | tee "$1" >&2
}

check_service() {
  podman exec "$target" systemctl is-active tradingbot >/dev/null ||
    die "tradingbot is not active on $target: $(podman exec "$target" systemctl status tradingbot --no-pager 2>&1 | tail -n 5)"
  podman exec "$target" python3 -c \
    "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/health', timeout=5).read().decode())" ||
    die "/health does not answer on $target"
}

test_ee() {
  local started recap
  started=$SECONDS
  ensure_ee_image
  log "EE ready in $((SECONDS - started)) s"
  ensure_mqueue
  prepare_run_dir
  start_target
  started=$SECONDS
  run_site "$run_dir/first.log"
  log "site.yml from the EE: first run $((SECONDS - started)) s"
  check_service
  started=$SECONDS
  run_site "$run_dir/second.log"
  log "site.yml from the EE: second run $((SECONDS - started)) s"
  recap=$(grep -aE "$target +: ok=" "$run_dir/second.log" || true)
  [[ $recap == *" changed=0 "* && $recap == *" failed=0 "* ]] || die "the second run was not a no-op: $recap"
  check_service
  log "the EE converged $target: tradingbot active, /health answers, second run changed nothing"
  # A failed run leaves the target up for a look; a passed one frees the machine.
  podman rm -f "$target" >/dev/null
}

main() {
  local command=${1:-test}
  case $command in
    images)
      command -v podman >/dev/null || die "podman is missing: run tools/bootstrap.sh first"
      in_parallel ensure_base_image ensure_target_image
      ;;
    build | test)
      command -v podman >/dev/null || die "podman is missing: run tools/bootstrap.sh first"
      # The path bootstrap prints, not the shared symlink, which another checkout may repoint.
      venv=$(bash "$repo/tools/bootstrap.sh")
      use_toolchain
      if [ "$command" = build ]; then ensure_ee_image; else test_ee; fi
      ;;
    destroy)
      podman rm -f "$target" >/dev/null 2>&1 || true
      podman network rm "$network" >/dev/null 2>&1 || true
      log "removed $target and network $network"
      ;;
    *) die "unknown command '$command' (build, test, images, destroy)" ;;
  esac
}

main "$@"
