#!/usr/bin/env bash
# Run HERE (the machine with pip and a network), not on the device machine.
#
# Downloads the wheels that `python -m amagi_plugin.demo_model` needs and the GPU image
# (/work/.library/device/KINDS.md, nvidia-h200) lacks, pinned to the versions in .venv,
# for CPython PYVER on manylinux x86_64, into DEST (one version of each; old wheels are
# removed first). Prints each wheel and the total, and fails if the total is over 50 MiB
# or if DEST=.whl would push what travels to the device (working tree + .whl) over 64 MiB.
#
#   scripts/device/prepare.sh                    # 3.12 wheels into .whl/ (for the device)
#   scripts/device/prepare.sh 3.11 /tmp/whl311   # for the CPU dry run (dryrun_cpu.sh)
#
# What the demo imports (read off amagi_plugin, dicom_io, models, db, synth, evaluation,
# and checked by importing every module its stages load): torch, numpy, pillow, matplotlib,
# tqdm (all on the GPU image) and monai, pydicom, av (the synthetic DICOM videos are encoded
# and decoded with PyAV). tests/test_packaging.py runs the demo's commands with the packages
# below blocked. sqlalchemy (the case index, 4.5 MiB), highdicom, pynetdicom, alembic,
# psycopg and pyjpegls are only used by `amagi serve` /
# `amagi process` / `amagi db` (pydicom merely probes for jpeg_ls), so they stay behind:
# the working tree (27 MiB in session 55, mostly the bundled .pth files) plus these wheels is
# close to the device tool's 64 MiB limit.
# Their own requirements (monai: torch, numpy) are on the
# GPU image; this script checks that against KINDS.md when it can read it.
# Never add torch or any nvidia/CUDA package here: the GPU image has its own.
#
# REPACK_LZMA: the av wheel re-zipped with LZMA is 26.8 MB instead of 35.8 MB (about a
# minute here; pip installs it, tried on CPU with Python 3.11; it needs the lzma module on
# the device's Python). auto (default): only when .whl would not fit the 64 MiB otherwise;
# 1: always; 0: never.
set -euo pipefail

PYVER=${1:-3.12}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
DEST=${2:-$REPO/.whl}
REPACK_LZMA=${REPACK_LZMA:-auto}
PACKAGES=(monai pydicom av)
MIB=1048576
MAX_WHEELS=$((50 * MIB))
MAX_TRAVEL=$((64 * MIB))
KINDS=/work/.library/device/KINDS.md

cd "$REPO"
if [[ $DEST == "$REPO/.whl" ]] && ! grep -qxF '/.whl/' .git/info/exclude 2>/dev/null; then
    mkdir -p .git/info
    echo '/.whl/' >> .git/info/exclude
fi

mib() { printf '%.1f MiB' "$(bc -l <<<"$1/$MIB")"; }
wheels_bytes() { cat "$DEST"/*.whl | wc -c; }
# What the device tool sends besides carried paths: tracked + untracked-not-ignored files.
tree_bytes() {
    git ls-files -z --cached --others --exclude-standard \
        | xargs -0 -r stat -c %s -- 2>/dev/null | paste -sd+ | bc
}
repack_av() {
    local whl
    for whl in "$DEST"/av-*.whl; do
        echo "re-zipping $(basename "$whl") with LZMA"
        python3 - "$whl" <<'EOF'
import os, sys, zipfile
src = sys.argv[1]
with zipfile.ZipFile(src) as zi, zipfile.ZipFile(src + ".tmp", "w", zipfile.ZIP_LZMA) as zo:
    for info in zi.infolist():
        zo.writestr(info, zi.read(info), compress_type=zipfile.ZIP_LZMA)
os.replace(src + ".tmp", src)
EOF
    done
}

# name==version as installed in .venv (pip freeze spelling)
freeze=$(.venv/bin/python -m pip freeze --disable-pip-version-check)
pins=()
for pkg in "${PACKAGES[@]}"; do
    pin=$(grep -i "^${pkg}==" <<<"$freeze" || true)
    [[ -n $pin ]] || { echo "prepare.sh: $pkg is not installed in .venv" >&2; exit 1; }
    pins+=("$pin")
done

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
echo "downloading for cp${PYVER/./} manylinux x86_64 into $DEST: ${pins[*]}"
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 \
    -d "$DEST" "${pins[@]}"

# Every non-extra requirement must be one of our wheels or on the GPU image.
# KINDS.md's line "<kinds>: their image, ... Packages: a, b, c." (the kinds' names before
# the colon have changed over time: nvidia-h200 alone, then with nvidia-h100-x1).
listed=""
[[ -r $KINDS ]] && listed=$(grep -m1 'their image.*Packages: ' "$KINDS" || true)
if [[ -n $listed ]]; then
    have=$(sed 's/.*Packages: //' <<<"$listed" | tr -d ' .' | tr ',' '\n')
    have+=$'\n'$(printf '%s\n' "${PACKAGES[@]}")
    missing=0
    for whl in "$DEST"/*.whl; do
        while read -r req; do
            name=$(sed -E 's/^Requires-Dist: *([A-Za-z0-9_.-]+).*/\1/' <<<"$req" \
                   | tr 'A-Z_.' 'a-z--')
            if ! grep -qix "$name" <<<"$have"; then
                echo "prepare.sh: $(basename "$whl") needs $name, missing on the GPU image" >&2
                missing=1
            fi
        done < <(unzip -p "$whl" '*.dist-info/METADATA' | tr -d '\r' \
                 | grep '^Requires-Dist:' | grep -v 'extra *==' || true)
    done
    ((missing == 0)) || exit 1
else
    echo "note: no package list of the GPU image in $KINDS; requirements not checked"
fi

if [[ $REPACK_LZMA == 1 ]]; then
    repack_av
elif [[ $REPACK_LZMA == auto && $DEST == "$REPO/.whl" ]] \
        && (($(tree_bytes) + $(wheels_bytes) > MAX_TRAVEL)); then
    echo "working tree + .whl would exceed 64 MiB:"
    repack_av
fi

echo
ls -l "$DEST"/*.whl | awk '{printf "%10d  %s\n", $5, $NF}'
total=$(wheels_bytes)
echo "total: $total bytes ($(mib "$total")) in $(ls "$DEST"/*.whl | wc -l) wheels"
if ((total > MAX_WHEELS)); then
    echo "prepare.sh: wheels exceed 50 MiB" >&2
    exit 1
fi

if [[ $DEST == "$REPO/.whl" ]]; then
    tree=$(tree_bytes)
    echo "travels to the device: tree $(mib "$tree") + .whl $(mib "$total")" \
         "= $(mib $((tree + total))) (limit 64 MiB)"
    if ((tree + total > MAX_TRAVEL)); then
        echo "prepare.sh: working tree + .whl exceed 64 MiB; the device call would fail" >&2
        exit 1
    fi
fi
