#!/usr/bin/env bash
# The source's end-to-end tests on each Spark line users run (issue 15). For each pyspark version:
# a clean venv (cached in ~/.cache/pi_stream_source/runtimes, keyed by version and setup.py) with
# that pyspark, the delta-spark that pairs with it when Delta publishes jars for the line, and this
# package (`pip install -e .`, without the spark extra); the Delta jars for the line; then
# tests/test_runtimes.py, plus tests/test_end_to_end.py and test_source.py's core tests where there
# is Delta (they write Delta tables). A table of the results is printed at the end.
#
#   .ci/runtimes.sh                  # every line below
#   .ci/runtimes.sh 4.0.5 4.3.0      # some
set -uo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
PYTHON="${PYTHON:-python3}"
# the newest patch of each line with Python streaming sources: 4.0 and 4.1 without admission
# control, 4.2 and 4.3 with it (Delta 4.4 has jars for 4.0-4.2; its pip package allows pyspark<=4.2.0)
VERSIONS=("$@")
# 4.2.0 is the project's own pin (setup.py), which `make test` runs this file and the whole suite on
[ ${#VERSIONS[@]} -eq 0 ] && VERSIONS=(4.0.5 4.1.4 4.3.0)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/pi_stream_source/runtimes"
KEY="$(cksum setup.py | cut -d' ' -f1)"
# test_source.py's (and test_health.py's Delta) tests that hold on every line and that test_runtimes.py does not repeat (its
# metric assertions need reportLatestOffset, which 4.0/4.1 lack; maxRecordsPerTrigger and
# AvailableNow are in test_runtimes.py for every sink)
CORE="test_runtimes or test_stream_lands_every_sent_value or restarted or bridged or bad_option or killed_writer or offset_health"
mkdir -p "$CACHE"
sink_of() { case "${1%.*}" in 4.0|4.1|4.2) echo delta ;; *) echo parquet ;; esac; }
venv_of() { echo "$CACHE/pyspark-$1-$KEY"; }

# a venv per version, the missing ones installed side by side (downloads dominate a cold cache)
install() {
  local v=$1 venv delta=""
  venv=$(venv_of "$v")
  [ "$(sink_of "$v")" = delta ] && delta="delta-spark==4.4.1"
  rm -rf "$CACHE/pyspark-$v-"*
  "$PYTHON" -m venv "$venv" && "$venv/bin/python" -m pip install -q --upgrade pip &&
    "$venv/bin/python" -m pip install -q "pyspark==$v" $delta "pandas>=2.0,<3" \
      "pytest>=8" "pytest-timeout>=2.3" "chispa>=0.10" -e ".[simulator]" && touch "$venv/.ready"
}
begun=$SECONDS
pids=()
for v in "${VERSIONS[@]}"; do
  if [ ! -f "$(venv_of "$v")/.ready" ]; then
    echo "== installing pyspark $v in $(venv_of "$v")" >&2
    install "$v" >"$CACHE/pyspark-$v.log" 2>&1 &
    pids+=($!)
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || true; done
echo "== venvs ready after $((SECONDS - begun)) s" >&2

results=()
status=0
for v in "${VERSIONS[@]}"; do
  sink=$(sink_of "$v")
  venv=$(venv_of "$v")
  log="$CACHE/pyspark-$v.log"
  started=$SECONDS
  if [ ! -f "$venv/.ready" ]; then
    tail -20 "$log" >&2
    results+=("$v|$sink|-|install failed (see $log)"); status=1; continue
  fi
  echo "== pyspark $v ($sink sink)" >&2
  # this checkout (CI clones into a new folder each run): re-point the editable install, no deps
  "$venv/bin/python" -m pip install -q --no-deps -e . >>"$log" 2>&1
  fallback=$("$venv/bin/python" -c 'from pi_stream_source.compat import describe; d = describe(); print(
      "native" if d["admissionControl"] else "reader applies the limit; AvailableNow: " + d["availableNow"]
      + "; metrics in progress: " + ("yes" if d["metricsInProgress"] else "no"))' 2>>"$log")
  if [ "$sink" = delta ] && ! "$venv/bin/python" -c 'from pi_stream_source.local_spark import delta_jars; delta_jars()' >>"$log" 2>&1; then
    tail -5 "$log" >&2
    results+=("$v|$sink|$fallback|Delta jars not found (see $log)"); status=1; continue
  fi
  # test_runtimes.py and test_source.py's core tests with the process zone neither UTC nor the
  # session's; test_end_to_end.py in UTC (its expected_rows helper builds naive UTC datetimes)
  runs=("Asia/Kolkata tests/test_runtimes.py")
  if [ "$sink" = delta ]; then
    runs=("Asia/Kolkata tests/test_runtimes.py tests/test_source.py tests/test_health.py" "UTC tests/test_end_to_end.py")
  fi
  out="$CACHE/pyspark-$v.pytest.log"
  : >"$out"
  rc=0
  for run in "${runs[@]}"; do
    read -r zone files <<<"$run"
    # shellcheck disable=SC2086  # $files is a list of paths
    TZ=$zone "$venv/bin/python" -m pytest $files -k "$CORE" -q -p no:cacheprovider >>"$out" 2>&1 || rc=1
  done
  tail -15 "$out"
  summary=$(grep -E "^[0-9]+ (passed|failed)|(passed|failed|error).* in [0-9.]+s" "$out" | tr -d '=' |
            sed 's/^ *//;s/ *$//' | paste -sd ';' -)
  [ "$rc" -eq 0 ] || status=1
  results+=("$v|$sink|$fallback|${summary:-rc $rc} ($((SECONDS - started)) s)")
done
echo
echo "pyspark | sink | admission control | result"
for r in "${results[@]}"; do echo "${r//|/ | }"; done
exit $status
