"""Environment checks behind ``amagi doctor``: each check really exercises the component."""

from __future__ import annotations

import enum
import importlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from amagi_plugin.config import Config
from db import mask_url

TORCH_VERSION = "2.13.0"
REQUIRED_DECODERS = ("h264", "hevc", "mpeg2video")
TEST_ENCODERS = ("libx264", "libx265", "mpeg2video")


class Status(str, enum.Enum):
    OK = "ok"
    WARN = "warn"  # works, with a caveat, or an optional part is missing
    FAIL = "FAIL"  # a required part is missing or broken


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    required: bool = True

    @property
    def failed(self) -> bool:
        return self.required and self.status is Status.FAIL


def _version(module: str) -> str:
    mod = importlib.import_module(module)
    return getattr(mod, "__version__", "?")


def check_python_packages() -> Iterator[Check]:
    for module in ("numpy", "pydicom", "pynetdicom", "highdicom", "monai", "av", "sqlalchemy",
                   "alembic"):
        try:
            yield Check(module, Status.OK, _version(module))
        except Exception as e:
            yield Check(module, Status.FAIL, f"cannot import: {e}")


def check_torch() -> Iterator[Check]:
    try:
        import torch
    except Exception as e:
        yield Check("torch", Status.FAIL, f"cannot import: {e}")
        return
    version = torch.__version__.split("+")[0]
    status = Status.OK if version == TORCH_VERSION else Status.FAIL
    yield Check("torch", status, f"{torch.__version__}, {torch.get_num_threads()} threads"
                + ("" if status is Status.OK else f" (expected {TORCH_VERSION})"))
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        yield Check("cuda", Status.OK, names, required=False)
    else:
        yield Check("cuda", Status.WARN, "not available: inference runs on the CPU", required=False)


def check_pyav() -> Iterator[Check]:
    import av

    for name in REQUIRED_DECODERS:
        try:
            av.codec.Codec(name, "r")
            yield Check(f"decoder {name}", Status.OK, "present")
        except Exception as e:
            yield Check(f"decoder {name}", Status.FAIL, f"missing from PyAV's FFmpeg: {e}")
    for name in TEST_ENCODERS:
        try:
            av.codec.Codec(name, "w")
            yield Check(f"encoder {name}", Status.OK, "present (tests, synthetic data)",
                        required=False)
        except Exception:
            yield Check(f"encoder {name}", Status.WARN, "missing: tests and 'amagi synth' need it",
                        required=False)


def check_database(cfg: Config) -> Check:
    url = cfg.database_url
    name = "database"
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            parent = next(p for p in [path.parent, *path.parents] if p.exists())
            if os.access(parent, os.W_OK):
                return Check(name, Status.OK, f"{path} will be created at first start")
            return Check(name, Status.FAIL, f"{path}: directory {parent} is not writable")
    try:
        from sqlalchemy import create_engine

        from db.migrate import status

        engine = create_engine(url)
        try:
            current, head = status(engine)
        finally:
            engine.dispose()
    except Exception as e:
        return Check(name, Status.FAIL, f"unreachable ({mask_url(url)}): "
                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
    if current == head:
        return Check(name, Status.OK, f"{mask_url(url)} at revision {current}")
    return Check(name, Status.WARN, f"{mask_url(url)} at revision {current or 'none'}, head is "
                 f"{head}: upgraded automatically at start ('amagi db upgrade' does it now)")


def check_spool(cfg: Config) -> Check:
    spool = cfg.spool_dir
    try:
        spool.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=spool, prefix=".doctor-") as fh:
            fh.write(b"x" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        return Check("spool", Status.FAIL, f"{spool} is not writable: {e.strerror or e}")
    free_mb = shutil.disk_usage(spool).free // (1 << 20)
    reserve = cfg.storage.reserve_mb
    if free_mb <= reserve:
        return Check("spool", Status.FAIL, f"{spool}: {free_mb} MiB free, under the reserve of "
                     f"{reserve} MiB (C-STORE would answer A700)")
    return Check("spool", Status.OK, f"{spool} writable, {free_mb} MiB free (reserve {reserve} MiB)")


def check_model(cfg: Config) -> Check:
    from amagi_plugin.modelspec import resolve_model

    try:
        spec = resolve_model(cfg.model)
    except Exception as e:
        return Check("model", Status.FAIL, str(e))
    try:
        from amagi_plugin.modelspec import load_model

        load_model(spec)  # as analyses build it: the demo manifest's build overrides included
    except Exception as e:
        return Check("model", Status.FAIL, f"{spec.checkpoint} does not load into {spec.arch}: {e}")
    refined = ""
    if spec.refiner is not None:
        from models.refiner import load_refiner

        try:
            load_refiner(spec.refiner)
        except Exception as e:
            return Check("model", Status.FAIL, f"refiner {spec.refiner} does not load: {e}")
        refined = f", refined by {spec.refiner.name}"
    return Check("model", Status.OK,
                 f"{spec.label}: {spec.checkpoint} loads into {spec.arch}{refined}")


def check_tools() -> Iterator[Check]:
    for tool, what in (("dciodvfy", "dicom3tools, validates written objects"),
                       ("storescu", "DCMTK, used by integration tests"),
                       ("dsrdump", "DCMTK, renders SR trees"),
                       ("Orthanc", "Orthanc, the PACS of integration tests")):
        path = shutil.which(tool)
        if path:
            yield Check(tool, Status.OK, f"{path} ({what})", required=False)
        else:
            yield Check(tool, Status.WARN, f"not found ({what}; optional)", required=False)


def run_checks(cfg: Config, progress: Callable[[str], None] | None = None) -> list[Check]:
    """Run every check; ``progress`` is told the name of each group before it runs."""
    groups: list[tuple[str, Callable[[], object]]] = [
        ("python packages", check_python_packages),
        ("torch", check_torch),
        ("PyAV codecs", check_pyav),
        ("database", lambda: check_database(cfg)),
        ("spool", lambda: check_spool(cfg)),
        ("model", lambda: check_model(cfg)),
        ("DICOM tools", check_tools),
    ]
    results: list[Check] = []
    for title, fn in groups:
        if progress:
            progress(title)
        out = fn()
        results.extend([out] if isinstance(out, Check) else list(out))  # type: ignore[arg-type]
    return results

