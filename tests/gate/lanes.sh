#!/usr/bin/env bash
# The two test lanes of `make test`, side by side: the main lane in .venv and the real-vLLM
# lane in .venv-vllm. Much of each lane's time is spent waiting (an autoscaler adding nodes,
# Ray noticing a lost one, servers and engines starting), so together they take far less
# than one after the other. Each lane writes its own log; both logs are printed whole once
# both have ended (each with its slowest tests), then one line per lane.
set -u
cd "$(dirname "$0")/../.."
logs=.test-logs
mkdir -p "$logs"
echo "test lanes: main -> $logs/main.log, vllm -> $logs/vllm.log (both running)"

run_lane() {  # name, python bin folder, marker expression
    local start=$SECONDS
    "$2/pytest" -q -ra --durations=25 -m "$3" >"$logs/$1.log" 2>&1
    local rc=$?
    echo "$1 lane: exit $rc in $((SECONDS - start)) s" >>"$logs/$1.log"
    return $rc
}

run_lane main .venv/bin "not vllm" &
main=$!
run_lane vllm .venv-vllm/bin vllm &
vllm=$!
wait $main
main_rc=$?
wait $vllm
vllm_rc=$?

for lane in main vllm; do
    echo "===== $lane lane ($logs/$lane.log) ====="
    cat "$logs/$lane.log"
done
# One closing line per lane: pytest's own summary line, then how the lane ended.
for lane in main vllm; do
    summary=$(grep -E '^=*\s*[0-9]+ (passed|failed|error)' "$logs/$lane.log" | tail -n 1 | tr -d '=')
    echo "$lane: $(echo "$summary" | xargs) ($(tail -n 1 "$logs/$lane.log"))"
done
[ $main_rc -eq 0 ] && [ $vllm_rc -eq 0 ]
