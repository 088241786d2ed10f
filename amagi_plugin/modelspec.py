"""Which model the plugin runs: the bundled demo, or an architecture plus a checkpoint file.

The bundled demo model lives in ``models/weights/demo/``: ``model.json`` names the
architecture, the checkpoint file beside it, the version and how it was trained. Weights
are never downloaded: a user's checkpoint is a path in the configuration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amagi_plugin.analysis import OperatingPoint
from amagi_plugin.config import ModelConfig
from amagi_plugin.errors import InputError
from dicom_io.results import DEMO_DISCLAIMER, WeightsKind

if TYPE_CHECKING:  # imported where it is used: it brings torch, which no CLI start needs
    import torch

    from amagi_plugin.probing import ProbeUse

DEMO_NAME = "demo"
DEMO_DIR = Path(__file__).resolve().parent.parent / "models" / "weights" / "demo"


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: what to build, which weights, and how to label its results.

    The one model description of the plugin: the service, ``amagi process`` and ``amagi
    evaluate`` (where ``name`` is the display label of a compared model) all use it. It is
    picklable, so evaluation worker processes receive it as it is.

    ``weights`` is :attr:`WeightsKind.DEMO_SYNTHETIC` (bundled demo),
    :attr:`WeightsKind.AUTHORS` (the authors' published checkpoint, detected by file name)
    or :attr:`WeightsKind.USER`. ``build`` holds the keyword overrides of
    :func:`models.build_model` (a ``model.json``'s or a checkpoint meta's ``build``).
    ``operating_point`` is the post-processing the model was calibrated for (a
    ``model.json``'s ``operating_point``); ``None``: the configured one. ``refiner`` is the
    :class:`~models.refiner.TemporalRefiner` file that re-reads the model's probabilities
    over the whole video before that post-processing (a ``model.json`` entry's
    ``refiner``); ``None``: the probabilities are read as the network gives them.
    ``probe`` holds the :class:`~models.patchnet.PatchNet` files run where the segmentation
    map peaks (several: the mean of their probabilities), their scores combined with the clip
    network's as ``probe_use`` says (:mod:`amagi_plugin.probing`; a ``model.json`` entry's
    ``probe``); empty: no probe.
    """

    name: str
    arch: str
    checkpoint: Path | None
    weights: WeightsKind
    version: str
    description: str = ""
    build: Mapping[str, Any] = field(default_factory=dict, hash=False)
    operating_point: OperatingPoint | None = None
    refiner: Path | None = None
    probe: tuple[Path, ...] = ()
    probe_use: ProbeUse | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", WeightsKind.coerce(self.weights))

    @property
    def label(self) -> str:
        suffix = f" ({DEMO_DISCLAIMER})" if self.weights is WeightsKind.DEMO_SYNTHETIC else ""
        return f"{self.name} {self.version}{suffix}"


def demo_manifest(directory: Path = DEMO_DIR) -> dict[str, Any]:
    path = directory / "model.json"
    if not path.is_file():
        raise InputError(f"the bundled demo model is missing ({path}); build it with "
                         "'make demo-model' or configure model.checkpoint")
    return json.loads(path.read_text())


def manifest_operating_point(entry: Mapping[str, Any], where: Path) -> OperatingPoint | None:
    """The ``operating_point`` of one model entry of a ``model.json`` (``None`` if absent);
    a malformed one is an :class:`InputError` naming the file."""
    if entry.get("operating_point") is None:
        return None
    try:
        return OperatingPoint.from_json(entry["operating_point"])
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: operating_point: {e}") from None


def manifest_refiner(entry: Mapping[str, Any], directory: Path) -> Path | None:
    """The ``refiner`` file of one model entry of ``directory/model.json`` (``None`` if
    absent); a named file that is missing is an :class:`InputError`."""
    name = entry.get("refiner")
    if name is None:
        return None
    path = directory / str(name)
    if not path.is_file():
        raise InputError(f"{directory / 'model.json'}: refiner file not found: {path}")
    return path


def manifest_probe(entry: Mapping[str, Any], directory: Path
                   ) -> tuple[tuple[Path, ...], ProbeUse | None]:
    """The ``probe`` files (one, or several read as one: their mean probability) and their
    use of one model entry of ``directory/model.json`` (``((), None)`` if absent); a
    malformed entry or a missing file is an :class:`InputError`."""
    if entry.get("probe") is None:
        return (), None
    from amagi_plugin.probing import ProbeUse

    where = directory / "model.json"
    try:
        names, use = ProbeUse.from_json(entry["probe"])
    except ValueError as e:
        raise InputError(f"{where}: probe: {e}") from None
    paths = tuple(directory / name for name in names)
    for path in paths:
        if not path.is_file():
            raise InputError(f"{where}: probe file not found: {path}")
    return paths, use


def resolve_model(cfg: ModelConfig, demo_dir: Path = DEMO_DIR) -> ModelSpec:
    """Turn ``[model]`` configuration into a :class:`ModelSpec` (checks files exist)."""
    if cfg.folder and cfg.checkpoint:
        raise InputError("model.folder and model.checkpoint are both set: a model folder's "
                         "model.json names its own checkpoint; set one of them")
    if cfg.checkpoint:
        path = Path(cfg.checkpoint).expanduser()
        if not path.is_file():
            raise InputError(f"model checkpoint not found: {path}")
        if cfg.name == DEMO_NAME:
            raise InputError("model.checkpoint is set: also set model.name to its architecture "
                             "(e.g. amagi_sf50, amagi_sf152)")
        return checkpoint_spec(cfg.name, cfg.name, path)
    if cfg.name != DEMO_NAME:
        raise InputError(f"model.name is {cfg.name!r} but no model.checkpoint is configured; "
                         "weights are never downloaded: point model.checkpoint at a .pth file"
                         + (" (model.folder names the architecture itself: leave model.name "
                            "unset)" if cfg.folder else ""))
    if cfg.folder:
        return folder_spec(Path(cfg.folder).expanduser())
    manifest = demo_manifest(demo_dir)
    ckpt = demo_dir / manifest["checkpoint"]
    if not ckpt.is_file():
        raise InputError(f"the bundled demo checkpoint is missing: {ckpt}")
    probe, probe_use = manifest_probe(manifest, demo_dir)
    return ModelSpec(f"amagi-demo-{manifest['arch']}", manifest["arch"], ckpt,
                     WeightsKind.DEMO_SYNTHETIC,
                     manifest.get("version", "0"), manifest.get("description", DEMO_DISCLAIMER),
                     build=dict(manifest.get("build", {})),
                     operating_point=manifest_operating_point(manifest,
                                                              demo_dir / "model.json"),
                     refiner=manifest_refiner(manifest, demo_dir), probe=probe,
                     probe_use=probe_use)


def model_dir_specs(d: Path) -> tuple[list[ModelSpec], bool]:
    """The models of ``d/model.json`` (its baseline first, names left for the caller to
    choose) and whether they are demo models (the bundled ones, or described as synthetic).
    Each spec's ``checkpoint`` is its entry's file in ``d``."""
    path = d / "model.json"
    if not path.is_file():
        raise InputError(f"no model.json in {d}")
    m = json.loads(path.read_text())
    demo = d.resolve() == DEMO_DIR.resolve() or "synthetic" in m.get("description", "")
    out = []
    for entry in (m.get("baseline"), m):
        if entry:
            ckpt, build = d / entry["checkpoint"], dict(entry.get("build", {}))
            spec = (ModelSpec("", entry["arch"], ckpt, WeightsKind.DEMO_SYNTHETIC,
                              str(m.get("version", "0")), build=build) if demo
                    else checkpoint_spec("", entry["arch"], ckpt, build))
            probe, probe_use = manifest_probe(entry, d)
            out.append(replace(spec, operating_point=manifest_operating_point(entry, path),
                               refiner=manifest_refiner(entry, d), probe=probe,
                               probe_use=probe_use))
    return out, demo


def folder_spec(d: Path) -> ModelSpec:
    """The main model of a model folder's ``model.json`` (``model.folder``), run as the bundled
    demo is: its operating point, refiner and probe; labelled a demo model when the folder
    is the bundled one or its description says synthetic (:func:`model_dir_specs`)."""
    if not d.is_dir():
        raise InputError(f"model folder not found: {d}")
    try:
        specs, demo = model_dir_specs(d)
        manifest = json.loads((d / "model.json").read_text())
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise InputError(f"{d / 'model.json'}: not a model description "
                         f"({type(e).__name__}: {e})") from None
    spec = specs[-1]
    if spec.checkpoint is None or not spec.checkpoint.is_file():
        raise InputError(f"{d / 'model.json'}: checkpoint not found: {spec.checkpoint}")
    return replace(spec, name=f"amagi-demo-{spec.arch}" if demo else spec.arch,
                   description=str(manifest.get("description",
                                                DEMO_DISCLAIMER if demo else "")))


def checkpoint_spec(name: str, arch: str, path: Path,
                    build: Mapping[str, Any] | None = None) -> ModelSpec:
    """The spec of a checkpoint file that is not the bundled demo: the authors' weights when
    the file name says so, else the user's; its version is the file's stem."""
    weights = WeightsKind.AUTHORS if _looks_like_authors(path) else WeightsKind.USER
    return ModelSpec(name, arch, path, weights, version=path.stem, build=dict(build or {}))


def _looks_like_authors(path: Path) -> bool:
    # The authors' Google Drive files carry their config names (split*_SF50/152...).
    name = path.name.lower()
    return "sf50" in name or "sf152" in name or ("amagi" in name and "split" in name)


def cuda_devices_lacking(name: str) -> int | None:
    """The host's number of CUDA devices when ``name`` (``cuda``, ``cuda:N``) names one it
    lacks; ``None`` when the device is there or is not a CUDA device."""
    import torch

    device = torch.device(name)
    if device.type != "cuda":
        return None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return count if count == 0 or (device.index or 0) >= count else None


def bf16_native(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 natively (not emulated through fp32)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
            try:
                if getattr(torch.cpu, probe)():
                    return True
            except (AttributeError, RuntimeError):
                continue
    return False


def emulated_bf16(device: torch.device | str) -> str | None:
    """Why bfloat16 on ``device`` would be emulated (a sentence's clause), or ``None`` where
    it computes it natively (:func:`bf16_native`)."""
    if bf16_native(device):
        return None
    return (f"{device} does not compute bfloat16 natively (a CPU needs AMX or AVX512-BF16, "
            "CUDA compute capability 8.0)")


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when a GPU is present, else ``cpu``; anything else is checked."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available")
    if not (name == "cpu" or name.startswith("cuda")):
        raise InputError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    count = cuda_devices_lacking(name)
    if count is not None:
        raise InputError(f"device {name!r} requested but this host has {count} CUDA "
                         f"device{'' if count == 1 else 's'}")
    return name


def load_model(spec: ModelSpec, device: str = "cpu"):
    """Build ``spec.arch`` with ``spec.build`` and load its checkpoint (strict); returns the
    model in eval mode on ``device``."""
    from models import build_model, load_checkpoint

    model = build_model(spec.arch, **spec.build)
    if spec.checkpoint is not None:
        load_checkpoint(model, spec.checkpoint)
    return model.eval().to(device)
