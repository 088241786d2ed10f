"""What runs an analysis's networks: torch (the default) or OpenVINO on the CPU
(``model.backend``).

``openvino`` compiles the clip network once, when the analyzer is built, with OpenVINO's
PyTorch front end (traced on one batch of the model's clip shape, the batch size left free)
and runs every batch through it on the CPU in fp32 (precision hint ``f32``), or in bfloat16
(hint ``bf16``) where the analysis takes bf16: under the speed switch on a CPU that computes
it natively (AVX512-BF16 or AMX; :func:`~amagi_plugin.modelspec.bf16_native`), within the
switch's tolerance. Measured on 2-core CPUs (README, "Speed switch and devices";
``benchmarks/pipeline.py --precision openvino``): in fp32, AMAGI-SF50 and the demo's clip
network 1.7-2.2x faster than torch's fp32 on an AVX2 CPU, their logits within the reference
tolerance of ``tests/models``; in bf16 on an AVX512-BF16 CPU, AMAGI-SF50's network 1.9x
faster again. A neighbourhood probe's network is compiled too (:func:`compiled_probe`);
the segmenter's own maps (the probe's where the clips give none, the key-frame masks) and
training stay in torch.

OpenVINO's model converter sends usage telemetry unless the user has declined it once
(a consent file in their home directory). A plugin next to a PACS must not phone home, so
:func:`import_openvino` blocks the telemetry package before OpenVINO is first imported: the
converter then falls back to its own no-op stub and writes nothing to the home directory.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType

import torch
from torch import nn

from amagi_plugin.config import BACKENDS
from amagi_plugin.errors import ConfigError
from amagi_plugin.modelspec import bf16_native
from models.hrnet_ocr import main_logits

INSTALL_HINT = "pip install 'amagi-plugin[openvino]'"


def import_openvino() -> ModuleType:
    """The ``openvino`` package, imported with its usage telemetry blocked (module docs);
    :class:`ConfigError` saying how to install it where it is missing."""
    if "openvino" not in sys.modules:
        # an import of a module mapped to None raises ImportError: ovc takes its stub
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    try:
        import openvino
    except ImportError as e:
        raise ConfigError(f"model.backend openvino needs the openvino package ({e}); "
                          f"install it with: {INSTALL_HINT}") from None
    return openvino


def check_backend(backend: str, device: str) -> None:
    """:class:`ConfigError` for a backend that cannot run the analysis on ``device``."""
    if backend not in BACKENDS:
        raise ConfigError(f"model.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "openvino" and torch.device(device).type != "cpu":
        raise ConfigError(f"model.backend openvino runs on the CPU; the analysis is on "
                          f"{device} (set model.device cpu, or model.backend torch)")


class _WithMap(nn.Module):
    """A clip network that also returns its segmentation net's main map: the
    (logits, map) pair that the torch path collects with a forward hook."""

    def __init__(self, model: nn.Module, segmenter: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.segmenter = segmenter

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept: list[torch.Tensor] = []
        hook = self.segmenter.register_forward_hook(
            lambda _m, _x, out: kept.append(main_logits(out)))
        try:
            logits = self.model(x)
        finally:
            hook.remove()
        return logits, kept[-1]


class OpenVinoNetwork:
    """``module`` compiled by OpenVINO for the CPU, called like it on a batch of any size
    (inputs of ``example``'s shape but the first dimension). Returns its outputs as torch
    tensors (always a tuple). Safe to call from several threads: each has its own
    inference request. ``bf16``: OpenVINO computes in bfloat16 (precision hint ``bf16``)
    where this CPU does natively, else in fp32."""

    def __init__(self, module: nn.Module, example: torch.Tensor,
                 threads: int | None = None, bf16: bool = False) -> None:
        ov = import_openvino()
        #: whether it computes in bfloat16: asked for, and native to this CPU (never emulated)
        self.bf16 = bf16 and bf16_native("cpu")
        shape = ov.PartialShape([-1, *example.shape[1:]])
        # the networks' shape checks become constants of the trace, as they should: quiet
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # OpenVINO's front end traces with torch.jit (deprecated in torch 2.13, working)
            warnings.filterwarnings("ignore", r"`torch\.jit\.trace", DeprecationWarning)
            converted = ov.convert_model(module.eval(), example_input=(example,),
                                         input=[shape])
        self._compiled = ov.Core().compile_model(converted, "CPU", {
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
            "INFERENCE_PRECISION_HINT": "bf16" if self.bf16 else "f32"})
        self.outputs = len(self._compiled.outputs)
        self._local = threading.local()

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        result = request.infer([array])
        # the request reuses its output buffers: copy before the next call
        return tuple(torch.from_numpy(result[i].copy()) for i in range(self.outputs))


def compiled_probe(net: nn.Module, bf16: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """A neighbourhood probe's network (:class:`~models.patchnet.PatchNet` or an ensemble)
    compiled by OpenVINO: neighbourhoods ``(N, frames, 3, crop, crop)`` → logits ``(N,)``
    (``bf16``: computed in bfloat16)."""
    cfg = net.cfg
    example = torch.randn(1, cfg.frames, 3, cfg.crop, cfg.crop,
                          generator=torch.Generator().manual_seed(0))
    compiled = OpenVinoNetwork(net, example, bf16=bf16)
    return lambda x: compiled(x)[0]


class CompiledClipNetwork:
    """A clip network on the OpenVINO backend: ``network(clips)`` gives its logits, and its
    segmentation net's main maps of the batch (or None for a model without one) in
    :attr:`last_maps` of the calling thread. ``bf16``: computed in bfloat16."""

    def __init__(self, model: nn.Module, clip_shape: Sequence[int],
                 segmenter: nn.Module | None, bf16: bool = False) -> None:
        module = model if segmenter is None else _WithMap(model, segmenter)
        # traced on noise: only shapes steer the networks' Python (their checks)
        example = torch.randn(1, *clip_shape, generator=torch.Generator().manual_seed(0))
        self._net = OpenVinoNetwork(module, example, bf16=bf16)
        self.bf16 = self._net.bf16  # computed in bfloat16 (asked for, native here)
        self._local = threading.local()

    @property
    def last_maps(self) -> torch.Tensor | None:
        return getattr(self._local, "maps", None)

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        out = self._net(clips)
        self._local.maps = out[1] if len(out) > 1 else None
        return out[0]
