#!/usr/bin/env bash
# Run HERE, after a device call of scripts/device/lease.sh (or build_demo.sh --stop-after
# trained) brought the trained networks back:
#
#   scripts/device/finish_build.sh FILES_DIR [EXTRA ARGS FOR amagi_plugin.demo_model ...]
#
# FILES_DIR holds trained-amagi.tar and trained-rest.tar (the device tool's files_at). They
# are unpacked into an empty work directory WORK (default var/demo-model-$RECIPE-device), and
# the same build is resumed there on this machine: it retrains none of the networks that
# came back, makes the validation and held-out sets, calibrates and evaluates (about 30
# minutes on 2 cores for evidence-probe-gpu). A probe the device did not train (lease.sh's
# default --stop-after clip) is trained here first, on its training cases made again here
# from the same seeds (session 41, evidence-probe-gpu: its 192 cases 16 min, the probe 80 min
# on 2 cores shared with a test run). It writes the demo folder to DEST (default
# var/demo-$RECIPE-device: a candidate, not the bundled model; models/weights/demo/ takes
# it only through the gate, tests/amagi_plugin/test_demo_gate.py).
#
# Environment: RECIPE=evidence-probe-gpu  WORK  DEST  PYTHON=.venv/bin/python
# AMAGI_MODEL_BACKEND=openvino (the default here): the validation and held-out analyses run
# their clip networks and probes through OpenVINO, 1.5-1.7x faster on these 2 cores, their
# probabilities within 1e-5 of torch's (README, "Speed switch and devices"); torch: as before.
set -euo pipefail
export AMAGI_MODEL_BACKEND=${AMAGI_MODEL_BACKEND:-openvino}

FILES=${1:?usage: finish_build.sh FILES_DIR [demo_model args ...]}
shift
REPO=$(cd "$(dirname "$0")/../.." && pwd)
RECIPE=${RECIPE:-evidence-probe-gpu}
WORK=${WORK:-$REPO/var/demo-model-$RECIPE-device}
DEST=${DEST:-$REPO/var/demo-$RECIPE-device}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}

for f in trained-amagi.tar trained-rest.tar; do
    [[ -f $FILES/$f ]] || { echo "finish_build.sh: $FILES/$f is missing" >&2; exit 2; }
done
if [[ -e $WORK ]] && [[ -n $(ls -A "$WORK") ]]; then
    echo "finish_build.sh: $WORK is not empty; remove it or set WORK" >&2
    exit 2
fi
mkdir -p "$WORK"
tar -xf "$FILES/trained-amagi.tar" -C "$WORK"  # file times kept: the resume reads them
tar -xf "$FILES/trained-rest.tar" -C "$WORK"
for net in seg amagi slowfast; do
    [[ -f $WORK/$net/done ]] || { echo "finish_build.sh: $net was not trained there" >&2; exit 2; }
done
cd "$REPO"
exec "$PYTHON" -m amagi_plugin.demo_model --recipe "$RECIPE" --work-dir "$WORK" --dest "$DEST" "$@"
