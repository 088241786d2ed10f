# The README's two commands:  make run  (the main job)   make test  (the whole test suite)
# Both are idempotent: the venv is rebuilt only when the packaging files change.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check
# Debian packages the tests use as real peers and validators. DCMTK is probed by dsrdump:
# pynetdicom installs a storescu of its own into the venv, which may come first on PATH.
APT_PACKAGES := dcmtk dicom3tools postgresql orthanc orthanc-dicomweb poppler-utils chromium
APT_PROBES := dsrdump dciodvfy Orthanc pdftotext chromium
# Orthanc's DICOMweb plugin (orthanc-dicomweb) is a library, probed by its path.
ORTHANC_DICOMWEB := /usr/share/orthanc/plugins/libOrthancDicomWeb.so
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test venv system-deps lint bench demo-model clean

run: venv
	$(BIN)/amagi serve

test: venv system-deps
	$(BIN)/python -m pytest

venv: $(STAMP)

# torch first (the CPU wheel), then everything else under the torch constraint.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,openvino]'
	@$(BIN)/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" \
		|| { echo "torch is not 2.13.0 in $(VENV)"; exit 1; }
	@touch $@

# Installs the Debian peers only when one of them is missing (apt-get update first).
system-deps:
	@missing=0; for p in $(APT_PROBES); do command -v $$p >/dev/null || missing=1; done; \
	 ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing=1; \
	 [ -e $(ORTHANC_DICOMWEB) ] || missing=1; \
	 if [ $$missing = 1 ]; then \
	   echo "installing Debian packages: $(APT_PACKAGES)"; \
	   $(SUDO) apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	 fi

lint: venv
	$(BIN)/ruff check .

bench: venv
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info

# The bundled demo model (synthetic data, not for clinical use): synthesise, train the
# segmenter, AMAGI, the SlowFast baseline and the neighbourhood probe, choose the operating
# point on validation cases, evaluate on held-out looks and bleeding-free video, write
# models/weights/demo/. Resumable (intermediate files in var/demo-model[-RECIPE]).
# RECIPE=shipped (the default with DEVICE=cuda) is the bundled 9.3, the evidence-probe-gpu
# recipe (its networks were trained on an H200; on 2 CPU cores it would take many hours);
# DEVICE=cuda trains and evaluates on the GPU and synthesises with every core. On the CPU the
# default is RECIPE=evidence-probe: 9.2, the same recipe at the CPU's budget (about 1.6 h of
# work; models/weights/demo/README.md); RECIPE=v3 the model bundled before 9.1 (<= 60 min).
# RECIPE=randomised (or randomised-gpu, a GPU budget) trains on domain-randomised looks,
# RECIPE=temporal the same with temporal guidance (amagi_tiny_tg), RECIPE=evidence temporal
# with the map's peak and area read by the head and look jitter (amagi_tiny_tge),
# RECIPE=evidence-peaks that with the segmenter trained on its own false peaks, read at the
# authors' operating point (about 2 h on 2 cores),
# RECIPE=evidence-refined that with a temporal refiner and bleeding-free validation,
# RECIPE=evidence-probe (9.2) evidence-peaks with the neighbourhood probe at the map's
# peaks and its operating point chosen on bleeding-free validation,
# RECIPE=randomised-gpu / evidence-peaks-gpu / evidence-probe-gpu (= shipped) evidence-refined /
# evidence-peaks / evidence-probe with a GPU's budget, RECIPE=evidence-probe-gpu-decoded that
# trained on frames decoded from each case's H.264 video (see models/weights/demo/README.md
# and models/weights/demo/heldout-looks/README.md).
# NETWORKS_FROM=DIR takes the trained networks of that model folder instead of training (the
# recipe must match its build but in how they are read: RECIPE=evidence-probe-gpu-read-stab
# NETWORKS_FROM=models/weights/demo calibrates and evaluates 9.3's networks, its probe read
# stabilised, in about an hour on 2 cores).
# PRECISION=bf16 trains the segmenter and the clip networks under bfloat16 autocast, only
# where the device computes it natively (a GPU, a CPU with AMX: training steps about 1.7x
# faster on 2 AMX cores); the recipes train in fp32.
DEVICE ?= cpu
# the bundled recipe where it was trained (a GPU); its CPU-sized twin on the CPU
ifneq ($(findstring cuda,$(DEVICE)),)
RECIPE ?= shipped
else
RECIPE ?= evidence-probe
# its validation and held-out analyses through OpenVINO (README, "Speed switch and devices")
demo-model: export AMAGI_MODEL_BACKEND ?= openvino
endif
demo-model: venv
	$(BIN)/python -m amagi_plugin.demo_model --device $(DEVICE) --recipe $(RECIPE) \
		$(if $(NETWORKS_FROM),--networks-from $(NETWORKS_FROM)) \
		$(if $(PRECISION),--precision $(PRECISION))
