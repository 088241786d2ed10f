#!/usr/bin/env bash
# Run ON THE DEVICE MACHINE (the GPU), from the repository root, through the device tool: one
# call of a lent session's plan (scripts/device/README.md, "Second GPU run"):
#
#   bash scripts/device/lease.sh [EXTRA ARGS FOR amagi_plugin.demo_model ...]
#
# with `.whl` carried (scripts/device/prepare.sh). It trains the demo's segmenter and clip
# networks (build_demo.sh --recipe $RECIPE --stop-after $STOP_AFTER; clip by default: the
# probe and its own 96 training cases, about 3 minutes of the device that a 15-minute session
# lacks, are left to finish_build.sh here) in the work directory WORK_DIR, inside
# the repository so that a second call on the still-warm machine resumes it, stopped by
# BUILD_S seconds; then, if the networks are all trained and at least BENCH_MIN_S seconds of
# CALL_S are left, the CUDA pipeline benchmark (bench_pipeline.sh) with the rest. Under $OUT:
# build.log, work-logs.tar.gz, trained-amagi.tar + trained-rest.tar (the trained networks,
# for scripts/device/finish_build.sh here), and bench.log + pipeline.json when the benchmark
# ran: at most 6 files. Exit code: the build's (124: stopped by its deadline).
#
# Environment: RECIPE=evidence-probe-gpu  STOP_AFTER=clip (or trained)  WORK_DIR=var/gpu-work
#   CALL_S=590  BUILD_S=580  BENCH_MIN_S=150  BENCH_ARGS="" (more arguments for
#   benchmarks/pipeline.py) (the device call's timeout_s must exceed CALL_S), and
#   build_demo.sh's and bench_pipeline.sh's.
# The second call of a session, at once after the first: BUILD_S=the time left, the same
# command; a finished training is skipped in seconds, and the benchmark gets the rest.
set -uo pipefail

: "${OUT:?OUT is not set (the device tool sets it)}"
RECIPE=${RECIPE:-evidence-probe-gpu}
STOP_AFTER=${STOP_AFTER:-clip}
CALL_S=${CALL_S:-590}
BUILD_S=${BUILD_S:-580}
BENCH_MIN_S=${BENCH_MIN_S:-150}
export WORK_DIR=${WORK_DIR:-var/gpu-work}

cd "$(dirname "$0")/../.."
DEADLINE_S=$BUILD_S bash scripts/device/build_demo.sh --recipe "$RECIPE" --stop-after "$STOP_AFTER" "$@"
rc=$?
left=$((CALL_S - SECONDS))
if ((rc != 0)); then
    echo "lease.sh: the training did not finish (exit code $rc); no benchmark"
elif ((left < BENCH_MIN_S)); then
    echo "lease.sh: ${left}s left of ${CALL_S}s, under ${BENCH_MIN_S}s: no benchmark"
else
    echo "lease.sh: the networks are trained; the benchmark gets ${left}s"
    # shellcheck disable=SC2086  # BENCH_ARGS: several arguments
    DEADLINE_S=$left bash scripts/device/bench_pipeline.sh ${BENCH_ARGS:-} \
        || echo "lease.sh: benchmark exit code $?"
fi
echo "lease.sh: exit code $rc after ${SECONDS}s"
exit "$rc"
