"""Named model variants and ``build_model``.

Building never reads a file: weights are loaded separately with
:func:`models.checkpoint.load_checkpoint`.

Variants (input is frames x pixels²):

- ``amagi_sf50``: the authors' AMAGI-SF50 (R50 slow + R50 fast + HRNet-W48-OCR), 8x224².
- ``amagi_sf152``: the authors' AMAGI-SF152 (R152 slow + R50 fast, as their config), 8x224².
- ``slowfast_r50_amagi``: plain SlowFast R50 with AMAGI's τ=α=2, lateral kernel 5, 2 classes,
  8x224² (the baseline AMAGI is compared with).
- ``slowfast_r50``: mmaction2 SlowFast R50 8x8x1 for Kinetics-400 (τ=α=4, kernel 7), 32x224².
- ``amagi_tiny``: R18 slow (width 16) + R18 fast (width 2) + HRNet-W8-OCR, 8x128²; for tests
  and the CPU demo model.
- ``slowfast_tiny``: the pathways of ``amagi_tiny`` with the plain SlowFast head, 8x128².
- ``amagi_tiny_tg``: the pathways of ``amagi_tiny`` with *temporal guidance*: its
  segmentation net (:class:`models.flowseg.FlowSeg`) sees the 5 clip frames around the
  centre (±0.2 s), not the centre frame alone, so its mask marks blood that flows rather
  than all blood. This project's demo lever, not the authors' design (their segmenter sees
  one frame).
- ``amagi_tiny_tge``: ``amagi_tiny_tg`` whose head also gives the classifier the map's own
  evidence, its peak and area (``AmagiHead(map_evidence=True)``), and in training leaves
  the pathway logits out of 9 samples in 10 so that the evidence learns to decide alone
  (on held-out looks the tiny pathways carry the training looks, the map carries the flow);
  in analysis the pathway logits weigh 1/10, as in training on average.
  The demo's lever too; the authors' head is unchanged in every other variant.
- ``amagi_tiny_tgea``: ``amagi_tiny_tge`` whose segmenter aligns each neighbouring frame to
  the centre one before taking differences (``FlowSegConfig.align``: a global translation
  by phase correlation), so that the camera's own motion does not look like flow.
- ``amagi_tiny_tgef``: ``amagi_tiny_tge`` whose segmenter has a full-resolution head
  (``FlowSegConfig.fine``): a source of a few pixels gets logits of its own, and the head
  reads each 4x4 cell's peak (:func:`models.flowseg.cell_peak`).

Sizes (``ModelCfg.params_m`` / ``gflops``; GFLOPs per clip counted by
``torch.utils.flop_counter``, one multiply-add = 2 FLOPs, convolutions and matmuls only):

=====================  ========  ===========
name                   params    GFLOPs/clip
=====================  ========  ===========
amagi_sf50             107.96 M  109.9
amagi_sf152            158.33 M  194.0
slowfast_r50_amagi      33.56 M   47.3
slowfast_r50            34.57 M  100.6
amagi_tiny               2.41 M    0.94
amagi_tiny_tg            2.33 M    1.66
amagi_tiny_tge           2.33 M    1.66
amagi_tiny_tgea          2.33 M    1.66
amagi_tiny_tgef          2.34 M    1.85
slowfast_tiny            2.10 M    0.77
=====================  ========  ===========
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from models.amagi import Amagi, AmagiHead
from models.errors import ModelConfigError, UnknownModelError
from models.flowseg import (
    FLOWSEG_TINY,
    FLOWSEG_TINY_ALIGNED,
    FLOWSEG_TINY_FINE,
    FlowSeg,
    FlowSegConfig,
)
from models.hrnet_ocr import HRNET_TINY_OCR, HRNET_W48_OCR, HRNetConfig, HRNetOCR
from models.recognizer import ModelCfg, Recognizer
from models.resnet3d import ResNet3dPathway
from models.slowfast import SlowFast, SlowFastHead

__all__ = ["SlowFastSpec", "build_model", "list_models", "model_cfg", "variant_spec"]

AMAGI_MEAN = (117.1168392375, 75.27494787, 67.37629650299999)
AMAGI_STD = (60.241352387999996, 51.261253263, 49.192591569)
KINETICS_MEAN = (123.675, 116.28, 103.53)
KINETICS_STD = (58.395, 57.12, 57.375)
BLEEDING_CLASSES = ("normal", "active_bleeding")


@dataclass(frozen=True)
class SlowFastSpec:
    """Everything needed to build one variant (all sizes are derived from these)."""

    slow_depth: int = 50
    fast_depth: int = 50
    slow_base: int = 64
    channel_ratio: int = 8  # β⁻¹: fast width = slow width / channel_ratio
    resample_rate: int = 2  # τ
    speed_ratio: int = 2  # α
    fusion_kernel: int = 5
    num_classes: int = 2
    head: str = "amagi"  # "amagi" or "slowfast"
    seg: HRNetConfig | FlowSegConfig | None = HRNET_W48_OCR
    time_rate: int = 2
    dropout: float = 0.5
    clip_len: int = 8
    frame_interval: int = 3
    input_size: int = 224
    mean: tuple[float, float, float] = AMAGI_MEAN
    std: tuple[float, float, float] = AMAGI_STD
    class_names: tuple[str, ...] = BLEEDING_CLASSES
    map_evidence: bool = False  # AMAGI head: the map's peak and area reach the classifier
    seg_scale: int = 1  # AMAGI: the segmenter sees the centre frames upsampled this many times
    pathway_dropout: float = 0.0  # with map_evidence: training samples decided by it alone
    params_m: float = 0.0
    gflops: float = 0.0


_TINY = dict(slow_depth=18, fast_depth=18, slow_base=16, channel_ratio=8,
             input_size=128, seg=HRNET_TINY_OCR)

_VARIANTS: dict[str, SlowFastSpec] = {
    "amagi_sf50": SlowFastSpec(params_m=107.96, gflops=109.9),
    "amagi_sf152": SlowFastSpec(slow_depth=152, params_m=158.33, gflops=194.0),
    "slowfast_r50_amagi": SlowFastSpec(head="slowfast", seg=None, params_m=33.56, gflops=47.3),
    "slowfast_r50": SlowFastSpec(
        resample_rate=4, speed_ratio=4, fusion_kernel=7, num_classes=400, head="slowfast",
        seg=None, clip_len=32, frame_interval=2, mean=KINETICS_MEAN, std=KINETICS_STD,
        class_names=(), params_m=34.57, gflops=100.6),
    "amagi_tiny": SlowFastSpec(**_TINY, params_m=2.41, gflops=0.94),  # type: ignore[arg-type]
    "slowfast_tiny": SlowFastSpec(**{**_TINY, "seg": None}, head="slowfast",  # type: ignore[arg-type]
                                  params_m=2.10, gflops=0.77),
    "amagi_tiny_tg": SlowFastSpec(**{**_TINY, "seg": FLOWSEG_TINY},  # type: ignore[arg-type]
                                  params_m=2.33, gflops=1.66),
    "amagi_tiny_tge": SlowFastSpec(**{**_TINY, "seg": FLOWSEG_TINY},  # type: ignore[arg-type]
                                   map_evidence=True, pathway_dropout=0.9,
                                   params_m=2.33, gflops=1.66),
}
# amagi_tiny_tge with the aligned segmenter: nothing else differs (the same parameters).
_VARIANTS["amagi_tiny_tgea"] = replace(_VARIANTS["amagi_tiny_tge"], seg=FLOWSEG_TINY_ALIGNED)
# amagi_tiny_tge whose segmenter sees the centre frames at twice the clip's scale (256 for a
# 128 clip): sources of a few pixels cover four times the area; its head's reduction grows.
_VARIANTS["amagi_tiny_tge2"] = replace(_VARIANTS["amagi_tiny_tge"], seg_scale=2,
                                       params_m=2.34, gflops=4.34)
# amagi_tiny_tge whose segmenter has a full-resolution head.
_VARIANTS["amagi_tiny_tgef"] = replace(_VARIANTS["amagi_tiny_tge"], seg=FLOWSEG_TINY_FINE,
                                       params_m=2.34, gflops=1.85)


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(_VARIANTS)


def variant_spec(name: str) -> SlowFastSpec:
    """The :class:`SlowFastSpec` a variant is built from (nothing is built)."""
    try:
        return _VARIANTS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known: {', '.join(list_models())}") from None


def model_cfg(name: str) -> ModelCfg:
    """Preprocessing constants of a variant, without building it."""
    return _cfg(name, variant_spec(name))


def _cfg(name: str, s: SlowFastSpec) -> ModelCfg:
    return ModelCfg(name=name, mean=s.mean, std=s.std, input_size=s.input_size,
                    clip_len=s.clip_len, frame_interval=s.frame_interval,
                    num_classes=s.num_classes, class_names=s.class_names,
                    has_segmentation=s.seg is not None,
                    seg_frames=s.seg.in_frames if s.seg is not None else 1,
                    seg_scale=s.seg_scale if s.seg is not None else 1,
                    params_m=s.params_m, gflops=s.gflops)


def _build(name: str, s: SlowFastSpec) -> Recognizer:
    if s.input_size % 32:
        raise ModelConfigError(f"input_size must be a multiple of 32, got {s.input_size}")
    if s.clip_len % s.resample_rate:
        raise ModelConfigError(
            f"clip_len {s.clip_len} is not a multiple of resample_rate {s.resample_rate}")
    if s.slow_base % s.channel_ratio:
        raise ModelConfigError(
            f"slow_base {s.slow_base} is not a multiple of channel_ratio {s.channel_ratio}")
    fast_base = s.slow_base // s.channel_ratio
    fast = ResNet3dPathway(s.fast_depth, fast_base, conv1_kernel=(5, 7, 7), inflate=(1, 1, 1, 1))
    lateral = [fast_base, *fast.stage_channels[:3]]
    slow = ResNet3dPathway(s.slow_depth, s.slow_base, conv1_kernel=(1, 7, 7),
                           inflate=(0, 0, 1, 1), lateral_channels=lateral,
                           fusion_kernel=s.fusion_kernel, speed_ratio=s.speed_ratio)
    slow_frames = s.clip_len // s.resample_rate
    fast_frames = s.clip_len // (s.resample_rate // s.speed_ratio)
    backbone: SlowFast
    if s.head == "amagi":
        if s.seg is None:
            raise ModelConfigError(f"{name}: the AMAGI head needs a segmentation model")
        seg_cfg = replace(s.seg, num_classes=2)
        segmenter = (FlowSeg(seg_cfg) if isinstance(seg_cfg, FlowSegConfig)
                     else HRNetOCR(seg_cfg))
        backbone = Amagi(slow, fast, segmenter, s.resample_rate, s.speed_ratio,
                         seg_scale=s.seg_scale)
        head: SlowFastHead | AmagiHead = AmagiHead(
            slow.out_channels, fast.out_channels, slow_frames, fast_frames,
            feature_size=s.input_size // 32, seg_size=s.input_size * s.seg_scale // 4,
            num_classes=s.num_classes, time_rate=s.time_rate, dropout=s.dropout,
            map_evidence=s.map_evidence, pathway_dropout=s.pathway_dropout)
    elif s.head == "slowfast":
        backbone = SlowFast(slow, fast, s.resample_rate, s.speed_ratio)
        head = SlowFastHead(slow.out_channels, fast.out_channels, s.num_classes, s.dropout)
    else:
        raise ModelConfigError(f"{name}: head must be 'amagi' or 'slowfast', got {s.head!r}")
    return Recognizer(backbone, head, _cfg(name, s))


def build_model(name: str, **overrides: object) -> Recognizer:
    """Build a named variant with fresh (PyTorch default) weights; reads no file.

    Parameters
    ----------
    name : str
        One of :func:`list_models` (``amagi_sf50``, ``amagi_sf152``, ``slowfast_r50``,
        ``slowfast_r50_amagi``, ``amagi_tiny``, ``amagi_tiny_tg``, ``amagi_tiny_tge``,
        ``slowfast_tiny``).
    **overrides
        Fields of :class:`SlowFastSpec` to change, e.g. ``input_size=160`` or
        ``num_classes=3``; the sizes of the head follow.

    Returns
    -------
    Recognizer
        ``model(clips)`` gives logits, ``model.predict(batch)`` averaged probabilities,
        ``model.default_cfg`` the preprocessing constants.

    Raises
    ------
    UnknownModelError
        If ``name`` is not a known variant.
    ModelConfigError
        If an override is unknown or inconsistent.
    """
    spec = variant_spec(name)
    if overrides:
        unknown = sorted(set(overrides) - set(SlowFastSpec.__dataclass_fields__))
        if unknown:
            raise ModelConfigError(f"unknown build_model override(s) for {name}: {unknown}")
        spec = replace(spec, params_m=0.0, gflops=0.0, **overrides)  # type: ignore[arg-type]
    return _build(name, spec)




def amagi_sf50() -> Recognizer:
    """AMAGI-SF50, the authors' ``split1_SF50_ts3_clip8_222`` configuration."""
    return build_model("amagi_sf50")


def amagi_sf152() -> Recognizer:
    """AMAGI-SF152 (slow R152, fast R50), the authors' ``split1_SF152_ts3_clip8_222``."""
    return build_model("amagi_sf152")


def slowfast_r50() -> Recognizer:
    """mmaction2 SlowFast R50 8x8x1, Kinetics-400."""
    return build_model("slowfast_r50")


def slowfast_r50_amagi() -> Recognizer:
    """SlowFast R50 baseline with AMAGI's clip layout (τ=α=2), 2 classes."""
    return build_model("slowfast_r50_amagi")


def amagi_tiny() -> Recognizer:
    """Small AMAGI for tests and the CPU demo model (8 frames at 128x128)."""
    return build_model("amagi_tiny")


def amagi_tiny_tg() -> Recognizer:
    """``amagi_tiny`` whose segmentation net sees the 5 clip frames around the centre."""
    return build_model("amagi_tiny_tg")


def amagi_tiny_tge() -> Recognizer:
    """``amagi_tiny_tg`` whose classifier also reads the map's peak and area."""
    return build_model("amagi_tiny_tge")


def amagi_tiny_tgea() -> Recognizer:
    """``amagi_tiny_tge`` whose segmenter aligns the neighbouring frames to the centre one."""
    return build_model("amagi_tiny_tgea")


def slowfast_tiny() -> Recognizer:
    """Small plain SlowFast with the pathways of ``amagi_tiny``."""
    return build_model("slowfast_tiny")
