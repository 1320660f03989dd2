#!/usr/bin/env bash
# `make test-under-load`: the README's test command with a CPU hog on both cores beside it,
# the proof that no test is decided by the machine's load (stress-ng from Debian's packages
# where installed, else two busy Python loops). The hog runs at the same priority as the
# tests, and is ended by its own process id however the run ends.
set -u
cd "$(dirname "$0")/../.."
hogs=()
stop_hogs() { [ ${#hogs[@]} -gt 0 ] && kill "${hogs[@]}" 2>/dev/null; }
trap stop_hogs EXIT
if command -v stress-ng >/dev/null; then
    stress-ng --cpu 2 --timeout 3h >/dev/null 2>&1 &
    hogs+=($!)
    echo "under load: stress-ng --cpu 2 (pid ${hogs[0]})"
else
    for _ in 1 2; do
        python3 -c 'while True: pass' &
        hogs+=($!)
    done
    echo "under load: two busy loops (pids ${hogs[*]}); apt-get install stress-ng for the usual hog"
fi
start=$SECONDS
make test
rc=$?
echo "make test under load: exit $rc in $((SECONDS - start)) s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
exit $rc
