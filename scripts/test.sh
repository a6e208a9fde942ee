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
# Every stage's whole output goes to its log; the console shows lint and pytest in full and, for
# molecule, only molecule's own step lines (the playbooks' task output is in the log). A failed
# stage is summed up again at the end, above the timings, so the end of the output says what broke.
logs="${SDCLOUD_TEST_LOGS:-$PWD/.test-logs}"
rm -rf "$logs" && mkdir -p "$logs"
declare -a report digest
failed=0
pytest_line=""

run_stage() {  # name, console filter (cat or molecule), command...
  local name=$1 filter=$2; shift 2
  local log="$logs/${name// /-}.log" t0=$SECONDS rc
  echo "=== stage $name: $*   (log: ${log#"$PWD"/})"
  if [ "$filter" = molecule ]; then
    "$@" 2>&1 | tee "$log" | grep --line-buffered -E '^(INFO|WARNING|ERROR|CRITICAL) '
  else
    "$@" 2>&1 | tee "$log"
  fi
  rc=${PIPESTATUS[0]}
  if [ "$rc" = 0 ]; then
    report+=("$(printf '%-28s %5ds  ok' "$name" $((SECONDS - t0)))")
  else
    report+=("$(printf '%-28s %5ds  FAILED (rc %s, log %s)' "$name" $((SECONDS - t0)) "$rc" "${log#"$PWD"/}")")
    digest+=("$name|$log")
    failed=1
  fi
}

failure_digest() {  # name, log: the lines that say why the stage failed
  local name=$1 log=$2 n
  echo "=== FAILED stage $name (whole log: ${log#"$PWD"/})"
  n=$(grep -n -m1 -E '^=+ short test summary info' "$log" | cut -d: -f1)
  if [ -n "$n" ]; then  # pytest: its own summary, one line per failed test
    tail -n +"$n" "$log" | head -40
    return
  fi
  n=$(grep -n -m1 -E '^(CRITICAL|ERROR) |Ansible return code was' "$log" | cut -d: -f1)
  if [ -n "$n" ]; then  # molecule: the task output that led to the first failed step
    sed -n "$((n > 60 ? n - 60 : 1)),$((n + 2))p" "$log" | cut -c1-400
    return
  fi
  tail -n 40 "$log" | cut -c1-400
}

ansible_doc_all() {  # every plugin's DOCUMENTATION must render (a YAML slip there breaks `ansible-doc`)
  local f rc=0
  for f in plugins/modules/*.py; do ansible-doc -t module "$(basename "$f" .py)" >/dev/null || rc=1; done
  for f in plugins/inventory/*.py; do ansible-doc -t inventory "$(basename "$f" .py)" >/dev/null || rc=1; done
  for f in plugins/callback/*.py; do ansible-doc -t callback "$(basename "$f" .py)" >/dev/null || rc=1; done
  # Filters: a .py holds several, each documented by its sidecar plugins/filter/<filter name>.yml. ansible-doc
  # lists a filter without one (or with one it cannot parse) as UNDOCUMENTED, and skips a filter file it cannot
  # import with a mere warning (its filters vanish from the list): both fail here, as does a sidecar that
  # documents no filter (a typo in its file name, a filter renamed or removed).
  local list names n
  list=$(ansible-doc -t filter -l 2>&1) || { echo "$list"; rc=1; }
  names=$(awk '$1 ~ /^ansible\.legacy\./ {print $1}' <<<"$list")
  grep -E "^\[WARNING\]: Skipping (file|plugin).*$PWD/plugins/filter/" <<<"$list" && rc=1
  [ -n "$names" ] || { echo "ansible-doc -t filter -l lists none of the filters in plugins/filter/*.py"; rc=1; }
  awk '$1 ~ /^ansible\.legacy\./ && $2 == "UNDOCUMENTED" { sub(/^ansible\.legacy\./, "", $1); bad = 1
         print "filter " $1 " is UNDOCUMENTED: add plugins/filter/" $1 ".yml (DOCUMENTATION, EXAMPLES, RETURN as in sdcloud_tcp_rules.yml)" }
       END { exit bad }' <<<"$list" || rc=1
  # shellcheck disable=SC2086  # one filter name a word
  [ -z "$names" ] || ansible-doc -t filter $names >/dev/null || rc=1
  for f in plugins/filter/*.yml; do
    n=$(basename "$f" .yml)
    grep -qx "ansible.legacy.$n" <<<"$names" || { echo "$f documents no filter: plugins/filter/*.py registers none named $n"; rc=1; }
    grep -qx "  name: $n" "$f" || { echo "$f: its DOCUMENTATION needs name: $n (the file's name)"; rc=1; }
  done
  [ "$rc" = 0 ] && echo "ansible-doc: every plugin renders"
  return $rc
}

# The pytest stage runs on SDCLOUD_TEST_WORKERS processes (pytest-xdist), a whole file on one worker: a file's
# module fixtures (its bridge, its test hosts, its stand-ins) stay in one process, and each end-to-end file has a
# bridge of its own. The end-to-end files mostly wait (test hosts booting, packages, a UI starting), so two
# workers take ~1/3 off the stage on 2 cores. The slowest tests are listed at the end, for the next one to cut.
run_pytest() {  # pytest args (wide: the summary lines keep their messages)
  local workers=${SDCLOUD_TEST_WORKERS:-2}
  local par=()
  [ "$workers" -gt 1 ] && par=(-n "$workers" --dist loadfile)
  COLUMNS=200 python -m pytest -p no:cacheprovider -ra --durations=25 "${par[@]}" "$@"
}

for stage in "${stages[@]}"; do
  case $stage in
    lint)
      run_stage ruff cat ruff check plugins tests bench bin scripts/comfyui-lock scripts/krita-profile
      run_stage yamllint cat yamllint --strict .
      run_stage ansible-lint cat ansible-lint --offline -q
      run_stage ansible-doc cat ansible_doc_all
      ;;
    molecule)
      for s in molecule/*/molecule.yml; do
        s=$(basename "$(dirname "$s")")
        [ "$s" = shared ] && continue
        run_stage "molecule $s" molecule molecule test -s "$s"
      done
      ;;
    unit) run_stage "pytest unit" cat run_pytest tests/unit ;;
    e2e) run_stage "pytest e2e" cat run_pytest tests/e2e ;;
    # the end-to-end files first: the longest start at once, the short unit files fill the workers' gaps
    pytest) run_stage "pytest unit+e2e" cat run_pytest tests/e2e tests/unit ;;
    *) echo "unknown stage $stage (lint, molecule, unit, e2e, pytest)" >&2; exit 2 ;;
  esac
done

for d in "${digest[@]}"; do
  echo
  failure_digest "${d%%|*}" "${d#*|}"
done
pytest_line=$(cat "$logs"/pytest-*.log 2>/dev/null | grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' | tail -1)
echo
echo "=== timings"
printf '%s\n' "${report[@]}"
printf '%-28s %5ds\n' total "$SECONDS"
[ -n "$pytest_line" ] && echo "$pytest_line"
exit $failed
