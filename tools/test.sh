#!/usr/bin/env bash
# The whole test suite: set-up, lint, sanity, pytest, and every molecule scenario on
# both platforms. Each stage runs even when an earlier one failed; the exit status is
# non-zero when any failed. The last line is "suite: N passed, N failed" (stages).
#
# Usage: tools/test.sh [STAGE ...]   stages: lint sanity pytest molecule ee (default: all)
#        MOLECULE_SCENARIOS="hosts default" tools/test.sh molecule
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/lib.sh
. "$repo/tools/lib.sh"
cd "$repo" || exit 1

bash tools/bootstrap.sh >/dev/null || die "bootstrap failed"
use_toolchain

passed=0
failed=0
failed_stages=()
stage_times=()
# Each stage's whole output, so that a failure's cause survives a long run's scrollback.
stage_logs="$repo/.pytest_cache/stage-logs"
rm -rf "$stage_logs" && mkdir -p "$stage_logs"

# record_stage NAME RC SECONDS [NOTE]: count a finished stage, log it and keep its time.
record_stage() {
  local name=$1 rc=$2 seconds=$3 note=${4:+, $4}
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    log "stage $name passed ($seconds s$note)"
  else
    failed=$((failed + 1))
    failed_stages+=("$name")
    log "stage $name FAILED with exit $rc ($seconds s$note)"
  fi
  stage_times+=("$(printf '%6d s  %-6s %s' "$seconds" "$([ "$rc" -eq 0 ] && echo passed || echo FAILED)" "$name${4:+ ($4)}")")
}

stage() {
  local name=$1 started rc
  shift
  started=$SECONDS
  log "stage $name: $*"
  "$@" 2>&1 | tee "$stage_logs/$name.log"
  rc=${PIPESTATUS[0]}
  record_stage "$name" "$rc" $((SECONDS - started))
}

run_lint() {
  stage yamllint yamllint --strict .
  stage ansible-lint ansible-lint --profile production --strict
  stage ruff-check ruff check .
  stage ruff-format ruff format --check .
  stage changelog-lint antsibull-changelog lint
  stage galaxy-build bash tools/check-build.sh
}

run_sanity() {
  stage ansible-test-sanity bash tools/sanity.sh
}

pytest_command=(python -m pytest -p no:cacheprovider tests/ -ra)

run_pytest() {
  stage pytest "${pytest_command[@]}"
}

# With the molecule stage in the same run, pytest runs beside it: the scenarios wait on
# containers and ansible's round trips for much of their time, which leaves a core to pytest.
# Its output goes to its log, shown when the molecule stage is over.
pytest_pid=
start_pytest_beside_molecule() {
  log "stage pytest: ${pytest_command[*]} (beside the molecule stage; its log: $stage_logs/pytest.log)"
  {
    local started=$SECONDS
    "${pytest_command[@]}" >"$stage_logs/pytest.log" 2>&1
    echo "$? $((SECONDS - started))" >"$stage_logs/pytest.result"
  } &
  pytest_pid=$!
}

finish_pytest_beside_molecule() {
  [ -n "$pytest_pid" ] || return 0
  wait "$pytest_pid"
  pytest_pid=
  local rc=1 seconds=0
  [ ! -s "$stage_logs/pytest.result" ] || read -r rc seconds <"$stage_logs/pytest.result"
  tail -n 40 "$stage_logs/pytest.log"
  record_stage pytest "$rc" "$seconds" "beside the molecule stage"
}

molecule_scenarios() {
  if [ -n "${MOLECULE_SCENARIOS:-}" ]; then
    echo "$MOLECULE_SCENARIOS"
  else
    find molecule -mindepth 2 -maxdepth 2 -name molecule.yml -printf '%h\n' | xargs -rn1 basename | sort
  fi
}

# The images are built in the background from the start (see main), beside lint and pytest:
# a cold build waits mostly on the mirror and the disk. This stage waits for it and shows its log.
images_pid=
start_images() {
  [ -z "$images_pid" ] || return 0
  { bash tools/test-hosts.sh && bash tools/ee.sh images; } >"$stage_logs/images.bg" 2>&1 &
  images_pid=$!
}

# wait_images: sets images_rc; a stage runs in a pipeline's subshell, which cannot wait.
images_rc=
wait_images() {
  local started=$SECONDS
  [ -z "$images_rc" ] || return 0
  start_images
  images_rc=0
  wait "$images_pid" || images_rc=$?
  echo "==> waited $((SECONDS - started)) s for the background image build" >>"$stage_logs/images.bg"
}

show_images_log() {
  cat "$stage_logs/images.bg"
  return "$images_rc"
}

run_molecule() {
  local scenario
  wait_images
  stage test-hosts show_images_log
  for scenario in $(molecule_scenarios); do
    stage "molecule-$scenario" molecule test -s "$scenario"
  done
}

run_ee() {
  # Not two builders of one image at once; ee.sh builds what the background job could not.
  [ -z "$images_pid" ] || wait_images
  stage execution-environment bash tools/ee.sh test
}

main() {
  local stages=("$@") name
  [ ${#stages[@]} -gt 0 ] || stages=(lint sanity pytest molecule ee)
  [[ " ${stages[*]} " != *" molecule "* && " ${stages[*]} " != *" ee "* ]] || start_images
  for name in "${stages[@]}"; do
    case $name in
      lint) run_lint ;;
      sanity) run_sanity ;;
      pytest)
        if [[ " ${stages[*]} " == *" molecule "* ]]; then
          start_pytest_beside_molecule
        else
          run_pytest
        fi
        ;;
      molecule)
        run_molecule
        finish_pytest_beside_molecule
        ;;
      ee) run_ee ;;
      *) die "unknown stage '$name' (lint, sanity, pytest, molecule, ee)" ;;
    esac
  done
  finish_pytest_beside_molecule
  for name in "${failed_stages[@]}"; do
    log "why stage $name failed (the lines that name an error, then its last lines; all of it: $stage_logs/$name.log)"
    sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$stage_logs/$name.log" |
      grep -a -i -E 'failed|fatal:|error|assert|traceback' | tail -n 40
    sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$stage_logs/$name.log" | tail -n 15
  done
  log "stage times (the whole run, set-up included: $SECONDS s)"
  printf '%s\n' "${stage_times[@]}"
  [ $failed -eq 0 ] || log "failed stages: ${failed_stages[*]}"
  echo "suite: $passed passed, $failed failed"
  [ $failed -eq 0 ]
}

main "$@"
