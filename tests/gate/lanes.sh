#!/usr/bin/env bash
# The two test lanes of `make test`: the main lane in .venv, then the real-vLLM lane in
# .venv-vllm, the second even when the first failed, so that one run says all that is wrong.
# One after the other, not side by side: on 2 cores both lanes are CPU-bound, and together
# they ran at a load of 25-50 and took longer than in turn. Each lane's output is shown as it
# runs and kept in .test-logs/<lane>.log (its slowest tests, its time by test file, then its
# CPU by kind of process, last); the run ends with one line per lane: pytest's summary, the
# lane's exit code and time.
set -u -o pipefail
cd "$(dirname "$0")/../.."
logs=.test-logs
mkdir -p "$logs"

run_lane() {  # name, python bin folder, marker expression
    local start=$SECONDS rc sampler
    rm -f "$logs/$1.cpu"
    "$2/python" tests/gate/cpu_by_process.py "$logs/$1.cpu" &
    sampler=$!
    for _ in $(seq 1200); do  # until it listens for its stop: a stdlib Python's start
        [ -e "$logs/$1.cpu" ] && break
        sleep 0.1
    done
    "$2/pytest" -q -ra --durations=25 --junitxml="$logs/$1.xml" -m "$3" 2>&1 | tee "$logs/$1.log"
    rc=${PIPESTATUS[0]}
    kill -TERM "$sampler" && wait "$sampler"
    if [ -s "$logs/$1.xml" ]; then
        "$2/python" tests/gate/time_by_file.py "$logs/$1.xml" 2>&1 | tee -a "$logs/$1.log"
    fi
    [ -s "$logs/$1.cpu" ] && tee -a "$logs/$1.log" <"$logs/$1.cpu"
    echo "$1 lane: exit $rc in $((SECONDS - start)) s" >>"$logs/$1.log"
    return "$rc"
}

# SmolLM2 for the vLLM lane, exported from its GGUF while the main lane runs (at a lower
# priority than the lane's own processes); its fixture exports it where this did not.
export_pid=
if [ -x .venv-vllm/bin/python ]; then
    nice -n 10 .venv-vllm/bin/python tests/gate/export_models.py >"$logs/export.log" 2>&1 &
    export_pid=$!
fi
run_lane main .venv/bin "not vllm"
main_rc=$?
[ -n "$export_pid" ] && wait "$export_pid"
run_lane vllm .venv-vllm/bin vllm
vllm_rc=$?

for lane in main vllm; do
    summary=$(grep -E '^=*\s*[0-9]+ (passed|failed|error)' "$logs/$lane.log" | tail -n 1 | tr -d '=')
    echo "$lane: $(echo "$summary" | xargs) ($(tail -n 1 "$logs/$lane.log"))"
done
[ "$main_rc" -eq 0 ] && [ "$vllm_rc" -eq 0 ]
