#!/usr/bin/env bash
# The source's end-to-end tests on each Spark line users run (issue 15). For each pyspark version:
# a clean venv (cached in ~/.cache/pi_stream_source/runtimes, keyed by version and setup.py) with
# that pyspark, the delta-spark that pairs with it when Delta publishes jars for the line, and this
# package (`pip install -e .`, without the spark extra); the Delta jars for the line; then
# tests/test_runtimes.py, plus tests/test_end_to_end.py and test_source.py's core tests where there
# is Delta (they write Delta tables). TZ=Asia/Kolkata: the process zone is neither UTC nor the
# session zone the tests set. A table of the results is printed at the end.
#
#   .ci/runtimes.sh                  # every line below
#   .ci/runtimes.sh 4.0.5 4.3.0      # some
set -uo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 TZ=Asia/Kolkata
PYTHON="${PYTHON:-python3}"
# the newest patch of each line with Python streaming sources: 4.0 and 4.1 without admission
# control, 4.2 and 4.3 with it (Delta 4.4 has jars for 4.0-4.2; its pip package allows pyspark<=4.2.0)
VERSIONS=("$@")
# 4.2.0 is the project's own pin (setup.py), which `make test` runs this file and the whole suite on
[ ${#VERSIONS[@]} -eq 0 ] && VERSIONS=(4.0.5 4.1.4 4.3.0)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/pi_stream_source/runtimes"
KEY="$(cksum setup.py | cut -d' ' -f1)"
CORE="max_records or available_now or restarted or bridged or bad_option"
mkdir -p "$CACHE"
results=()
status=0
for v in "${VERSIONS[@]}"; do
  line="${v%.*}"
  case "$line" in
    4.0|4.1|4.2) delta="delta-spark==4.4.1"; sink=delta ;;
    *) delta=""; sink=parquet ;;
  esac
  venv="$CACHE/pyspark-$v-$KEY"
  log="$CACHE/pyspark-$v.log"
  echo "== pyspark $v ($sink sink): $venv" >&2
  started=$SECONDS
  if [ ! -f "$venv/.ready" ]; then
    rm -rf "$CACHE/pyspark-$v-"*
    if ! { "$PYTHON" -m venv "$venv" && "$venv/bin/python" -m pip install -q --upgrade pip &&
           "$venv/bin/python" -m pip install -q "pyspark==$v" $delta "pandas>=2.0,<3" \
             "pytest>=8" "pytest-timeout>=2.3" "chispa>=0.10" -e ".[simulator]"; } >"$log" 2>&1; then
      tail -20 "$log" >&2
      results+=("$v|$sink|-|install failed (see $log)"); status=1; continue
    fi
    touch "$venv/.ready"
  fi
  # this checkout (CI clones into a new folder each run): re-point the editable install, no deps
  "$venv/bin/python" -m pip install -q --no-deps -e . >>"$log" 2>&1
  fallback=$("$venv/bin/python" -c 'from pi_stream_source import compat; print("native" if compat.HAS_ADMISSION_CONTROL
      else "latestOffset() shim, AvailableNow as one batch, no metrics")' 2>>"$log")
  if [ "$sink" = delta ] && ! "$venv/bin/python" -c 'from pi_stream_source.local_spark import delta_jars; delta_jars()' >>"$log" 2>&1; then
    tail -5 "$log" >&2
    results+=("$v|$sink|$fallback|Delta jars not found (see $log)"); status=1; continue
  fi
  tests=(tests/test_runtimes.py)
  select=()
  if [ "$sink" = delta ]; then
    tests+=(tests/test_end_to_end.py tests/test_source.py)
    # test_source's metric assertions need reportLatestOffset, which 4.0/4.1 lack; the matrix runs
    # its tests that hold on every line (test_runtimes.py covers the rest there)
    select=(-k "test_runtimes or test_stream_lands_every_sent_value or $CORE")
  fi
  out="$CACHE/pyspark-$v.pytest.log"
  "$venv/bin/python" -m pytest "${tests[@]}" "${select[@]}" -q -p no:cacheprovider >"$out" 2>&1
  rc=$?
  tail -15 "$out"
  summary=$(grep -E "(passed|failed|error)" "$out" | tail -1 | tr -d '=' | sed 's/^ *//;s/ *$//')
  [ "$rc" -eq 0 ] || status=1
  results+=("$v|$sink|$fallback|${summary:-rc $rc} ($((SECONDS - started)) s)")
done
echo
echo "pyspark | sink | admission control | result"
for r in "${results[@]}"; do echo "${r//|/ | }"; done
exit $status
