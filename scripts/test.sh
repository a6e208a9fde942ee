#!/usr/bin/env bash
# The whole test suite, stage by stage, with timings: lint, molecule scenarios (roles on Debian 12
# test hosts), then pytest (plugin tests against the cloud stand-ins, end-to-end playbooks).
# `scripts/test.sh [lint|molecule|unit|e2e]...` runs only the named stages.
set -uo pipefail
cd "$(dirname "$0")/.."
export ANSIBLE_CONFIG="$PWD/ansible.cfg" PY_COLORS=0 ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1
export PATH="$PWD/.venv/bin:$PATH"
# Test hosts live on their own bridge (10.87.8.0/24), away from a machine `make up` made on net 0.
export SDCLOUD_NET="${SDCLOUD_NET:-8}"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(lint molecule pytest)
declare -a report
failed=0
pytest_line=""

run_stage() {  # name, command...
  local name=$1; shift
  local t0=$SECONDS
  echo "=== stage $name: $*"
  if "$@"; then
    report+=("$(printf '%-28s %5ds  ok' "$name" $((SECONDS - t0)))")
  else
    report+=("$(printf '%-28s %5ds  FAILED' "$name" $((SECONDS - t0)))")
    failed=1
  fi
}

run_pytest() {  # pytest args...
  local log
  log=$(mktemp)
  python -m pytest -p no:cacheprovider -ra "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  pytest_line=$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$log" | tail -1)
  rm -f "$log"
  return "$rc"
}

for stage in "${stages[@]}"; do
  case $stage in
    lint)
      run_stage ruff ruff check plugins tests bench bin
      run_stage yamllint yamllint --strict .
      run_stage ansible-lint ansible-lint --offline -q
      ;;
    molecule)
      for s in molecule/*/molecule.yml; do
        s=$(basename "$(dirname "$s")")
        [ "$s" = shared ] && continue
        run_stage "molecule $s" molecule test -s "$s"
      done
      ;;
    unit) run_stage "pytest unit" run_pytest tests/unit ;;
    e2e) run_stage "pytest e2e" run_pytest tests/e2e ;;
    pytest) run_stage "pytest unit+e2e" run_pytest tests/unit tests/e2e ;;
    *) echo "unknown stage $stage (lint, molecule, unit, e2e, pytest)" >&2; exit 2 ;;
  esac
done

echo
echo "=== timings"
printf '%s\n' "${report[@]}"
printf '%-28s %5ds\n' total "$SECONDS"
[ -n "$pytest_line" ] && echo "$pytest_line"
exit $failed
