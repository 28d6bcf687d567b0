#!/usr/bin/env bash
# The long chaos run (issue: exactly-once under crashes): the fault tests of tests/integration/test_faults.py with
# a feed of about 1.1M capture events published over 5 minutes, the Faust worker SIGKILLed 8 times
# and the sink 7 times, workers joining and leaving; each must end equal to the brute-force reference.
set -euo pipefail
cd "$(dirname "$0")/.."
export GENEALOGY_CHAOS_UNITS=${GENEALOGY_CHAOS_UNITS:-360000}
export GENEALOGY_CHAOS_KILLS=${GENEALOGY_CHAOS_KILLS:-8}
export GENEALOGY_CHAOS_SECONDS=${GENEALOGY_CHAOS_SECONDS:-300}
# The feed packs 200 hours of plant time (360,000 units, one every 2 s) into 5 minutes. After a kill, a worker
# replays what its group had not committed: seconds of wall time, but hours of event time here. Replayed
# completions older than the join's retention come back as `late` dead letters (their edges are in already;
# 31,471 of them with the 6 h default), so retention covers the replay window in this feed's event time.
# A plant's feed runs in real time, where the 6 h default covers any replay window by far.
export GENEALOGY_RETENTION_MS=${GENEALOGY_RETENTION_MS:-604800000}
exec .venv/bin/python -m pytest -q -rs tests/integration/test_faults.py "$@"
