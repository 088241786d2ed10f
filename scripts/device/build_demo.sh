#!/usr/bin/env bash
# Run ON THE DEVICE MACHINE (the GPU), from the repository root, through the device tool:
#
#   bash scripts/device/build_demo.sh [EXTRA ARGS FOR amagi_plugin.demo_model ...]
#
# with `.whl` carried (made here by scripts/device/prepare.sh). It installs the wheels into
# /tmp/site, builds the demo model with `python -m amagi_plugin.demo_model --device cuda
# --work-dir /tmp/demo-work --dest /tmp/demo-dest EXTRA...`, stopped by `timeout` so the
# whole script ends before DEADLINE_S (default 530 s), and leaves under $OUT at most 6 files:
#   build.log          everything printed (also when the build fails or is stopped)
#   demo-small.tar.gz  the demo folder without weights: README.md, model.json, training.json,
#                      metrics*.json/md, *.png
#   *.pth              each weights file of the demo folder (amagi_tiny_demo.pth, ...)
#   work-logs.tar.gz   the work directory's logs and json (training stdout, timings, config)
#   trained-amagi.tar, trained-rest.tar   when the build did not finish: its trained
#                      networks as a resumable work directory without data (pack_trained)
# (--dest is not $OUT/demo: the demo folder holds more than the tool's 8 files.)
#
# Environment (defaults are for the device; scripts/device/dryrun_cpu.sh overrides them):
#   DEVICE=cuda  PYTHON=python3  WHEELS=.whl  SITE=/tmp/site  WORK_DIR=/tmp/demo-work
#   DEST_DIR=/tmp/demo-dest  DEADLINE_S=530  OUT (set by the device tool)
set -euo pipefail

: "${OUT:?OUT is not set (the device tool sets it)}"
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
WORK_DIR=${WORK_DIR:-/tmp/demo-work}
DEST_DIR=${DEST_DIR:-/tmp/demo-dest}
DEADLINE_S=${DEADLINE_S:-530}  # whole script; the device call's timeout_s must exceed it
PACK_RESERVE_S=25              # kept for packing the results after the build

cd "$(dirname "$0")/../.."
# shellcheck source=scripts/device/wheels.sh
. scripts/device/wheels.sh
mkdir -p "$OUT"
LOG=$OUT/build.log

build() {
    set -e  # runs in the pipeline's subshell, where the caller's `set +e` would be inherited
    echo "== $(date -u +%FT%TZ) build_demo.sh on $(hostname), device=$DEVICE, args: $*"
    command -v nvidia-smi >/dev/null && nvidia-smi -L || true

    install_wheels

    echo "== imports"
    "$PYTHON" - <<'EOF'
import sys, torch, numpy, PIL, matplotlib, tqdm, monai, pydicom, av
print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
for m in (numpy, PIL, matplotlib, tqdm, monai, pydicom, av):
    print(f"  {m.__name__} {getattr(m, '__version__', '?')}  {m.__file__}")
import amagi_plugin.demo_model, amagi_plugin.cli  # noqa: E401  (the demo's own imports)
EOF

    local left=$((DEADLINE_S - SECONDS - PACK_RESERVE_S))
    ((left > 30)) || { echo "no time left for the build (${left}s)"; return 1; }
    echo "== $(date -u +%T) demo build, stopped after ${left}s"
    rm -rf "$DEST_DIR"
    local rc=0
    timeout --kill-after=10 "$left" "$PYTHON" -m amagi_plugin.demo_model --device "$DEVICE" \
        --work-dir "$WORK_DIR" --dest "$DEST_DIR" "$@" || rc=$?
    ((rc != 124 && rc != 137)) || echo "== demo build STOPPED by timeout after ${left}s"
    echo "== $(date -u +%T) demo build exit code $rc (script at ${SECONDS}s)"
    return "$rc"
}

# The build did not finish (stopped by --stop-after trained, a timeout or an error): the
# trained networks come back as a resumable work directory without its data, in two tars of
# at most 16 MiB each (the tool's limit per file): trained-amagi.tar (the main network) and
# trained-rest.tar (segmenter, baseline, probes, config.json, timings.json, done markers).
# Training checkpoints lose their optimizer state (export_weights keeps the meta and its
# loss history); every file keeps its modification time, which the build's resume reads.
# Unpack both into an empty folder and run the same build there (see README.md).
pack_trained() {
    local kit=/tmp/trained-kit
    rm -rf "$kit" && mkdir -p "$kit"
    PYTHONPATH=$SITE:$PWD "$PYTHON" - "$WORK_DIR" "$kit" <<'EOF'
import os, shutil, sys
from pathlib import Path
from models.training.loops import export_weights
work, kit = Path(sys.argv[1]), Path(sys.argv[2])
for f in sorted(work.iterdir()):
    if f.is_file() and (f.suffix == ".pth" or f.name in ("config.json", "timings.json")):
        shutil.copy2(f, kit / f.name)
for net in ("seg", "amagi", "slowfast"):
    if not (work / net / "done").is_file():
        continue  # unfinished training is not resumable from here: it needs its data
    (kit / net).mkdir()
    shutil.copy2(work / net / "done", kit / net / "done")
    src, dst = work / net / "latest.pth", kit / net / "latest.pth"
    export_weights(src, dst)
    st = src.stat()
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    print(f"  {net}: {dst.stat().st_size} bytes")
EOF
    (cd "$kit" && { if [[ -d amagi ]]; then tar -cf "$OUT/trained-amagi.tar" amagi; fi
     find . -path ./amagi -prune -o -type f -printf '%P\n' | sort \
        | tar -cf "$OUT/trained-rest.tar" -T -; })
}

pack() {
    echo "== packing into $OUT"
    if [[ -d $DEST_DIR ]]; then
        (cd "$DEST_DIR" && find . -maxdepth 1 -type f ! -name '*.pth' -printf '%P\n' \
            | sort | tar -czf "$OUT/demo-small.tar.gz" -T -)
        find "$DEST_DIR" -maxdepth 1 -type f -name '*.pth' -exec cp {} "$OUT"/ \;
    fi
    if [[ ! -f $DEST_DIR/model.json && -f $WORK_DIR/config.json ]]; then
        pack_trained
    fi
    if [[ -d $WORK_DIR ]]; then
        (cd "$WORK_DIR" && find . -path ./data -prune -o -type f \
            \( -name '*.log' -o -name '*.json' -o -name '*.md' -o -name done \) -printf '%P\n' \
            | sort | tar -czf "$OUT/work-logs.tar.gz" -T -)
    fi
    ls -l "$OUT"
}

set +e
build "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
pack 2>&1 | tee -a "$LOG"
set -e
echo "build_demo.sh: exit code $rc after ${SECONDS}s" | tee -a "$LOG"
exit "$rc"
