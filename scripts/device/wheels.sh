# Sourced by the device scripts (build_demo.sh, bench_pipeline.sh), never run on its own:
# install_wheels puts the carried wheels ($WHEELS/*.whl, made here by prepare.sh) into $SITE
# and exports PYTHONPATH=$SITE:$PWD (the repository root), as the device README says.
install_wheels() {
    echo "== installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1
}
