#!/usr/bin/env bash
# The long chaos run (issue: exactly-once under crashes): the fault tests of tests/test_faults.py with
# a feed of about 1.1M capture events published over 5 minutes, the Faust worker SIGKILLed 8 times
# and the sink 7 times, workers joining and leaving; each must end equal to the brute-force reference.
set -euo pipefail
cd "$(dirname "$0")/.."
export GENEALOGY_CHAOS_UNITS=${GENEALOGY_CHAOS_UNITS:-360000}
export GENEALOGY_CHAOS_KILLS=${GENEALOGY_CHAOS_KILLS:-8}
export GENEALOGY_CHAOS_SECONDS=${GENEALOGY_CHAOS_SECONDS:-300}
exec .venv/bin/python -m pytest -q -rs tests/test_faults.py "$@"
