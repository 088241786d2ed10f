#!/usr/bin/env bash
# Run HERE: a CPU rehearsal of scripts/device/build_demo.sh, in a stand-in for the GPU image.
#
#   scripts/device/dryrun_cpu.sh [EXTRA ARGS FOR amagi_plugin.demo_model ...]   (default --quick)
#
# The stand-in is a bare venv (/tmp/devsim, made once) holding only torch (the CPU wheel, as
# the Makefile installs it) and the packages the GPU image already has that the demo imports
# (numpy, pillow, matplotlib, tqdm, at .venv's versions): none of the project's other
# dependencies, so they must come from the wheels, as on the device. This machine's python
# may differ from the device's 3.12, so the wheels are fetched for it into /tmp/whl$VER.
# Results land in OUT=/tmp/devout, as they would come back from the device.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${DEVSIM:-/tmp/devsim}
cd "$REPO"

if [[ ! -x $VENV/bin/python ]]; then
    python3 -m venv "$VENV"
    pins=$(.venv/bin/python -m pip freeze | grep -iE '^(numpy|pillow|matplotlib|tqdm)==')
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install -q -c constraints.txt torch==2.13.0 $pins
fi
ver=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
wheels=/tmp/whl${ver/./}
scripts/device/prepare.sh "$ver" "$wheels"

export OUT=${OUT:-/tmp/devout} DEVICE=${DEVICE:-cpu} PYTHON=$VENV/bin/python WHEELS=$wheels
export SITE=/tmp/devsim-site WORK_DIR=/tmp/devsim-work DEST_DIR=/tmp/devsim-dest
export DEADLINE_S=${DEADLINE_S:-1800}  # a CPU is slower than the H200; 530 s on the device
rm -rf "$OUT" "$SITE" "$WORK_DIR" "$DEST_DIR"
(($#)) || set -- --quick
exec bash scripts/device/build_demo.sh "$@"
