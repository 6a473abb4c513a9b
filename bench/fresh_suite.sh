#!/bin/bash
# The README's test command as a newcomer runs it (#35): a fresh clone of this repository, a fresh venv, an empty
# coa-lora cache and (with --no-chromium) Debian's chromium removed first; prints the whole command's wall time and
# keeps pytest's per-test durations and each notebook cell's time.
#
#     bash bench/fresh_suite.sh 1 --no-chromium     # then: tail /tmp/fresh-1.log; ls /tmp/fresh-1-nb
set -u
N=$1
REPO=$(cd "$(dirname "$0")/.." && pwd)
rm -rf /tmp/fresh-$N /tmp/cache-$N
if [ "${2:-}" = "--no-chromium" ]; then apt-get remove -y -q chromium > /tmp/fresh-$N.apt.log 2>&1; fi
git clone -q "$REPO" /tmp/fresh-$N
cd /tmp/fresh-$N
start=$(date +%s)
COA_LORA_CACHE=/tmp/cache-$N COA_NOTEBOOK_TIMINGS=/tmp/fresh-$N-nb PYTEST_ADDOPTS="--durations=0" \
    python3 tasks.py test > /tmp/fresh-$N.log 2>&1
rc=$?
echo "run $N: rc=$rc, whole command $(( $(date +%s) - start )) s, $(tail -1 /tmp/fresh-$N.log)"
