"""Networks of the AMAGI plugin: SlowFast, HRNet-OCR, the AMAGI fusion head, checkpoints.

Public API::

    from models import build_model, load_checkpoint
    model = build_model("amagi_sf50")         # amagi_sf152, slowfast_r50, slowfast_r50_amagi,
                                              # amagi_tiny, amagi_tiny_tg(e), slowfast_tiny
    report = load_checkpoint(model, "x.pth")  # the authors' {'state_dict': ...} files
    model.eval()
    logits = model(clips)                     # (N, 3, 8, 224, 224) normalised -> (N, 2)
    probs = model.predict(batch)              # (B, K, 3, 8, 224, 224) -> (B, 2)

Importing this package builds nothing and reads no file.
"""

from __future__ import annotations

from models.checkpoint import (
    CheckpointKind,
    LoadReport,
    load_checkpoint,
    map_seg_checkpoint_keys,
    read_checkpoint,
    save_checkpoint,
)
from models.errors import (
    CheckpointError,
    InputShapeError,
    ModelConfigError,
    ModelError,
    UnknownModelError,
)
from models.gradcam import GradCAM, GradCamResult, denormalize, overlay_heatmap, save_gradcam
from models.recognizer import ModelCfg, Recognizer
from models.registry import build_model, list_models, model_cfg

__all__ = [
    "CheckpointError",
    "CheckpointKind",
    "GradCAM",
    "GradCamResult",
    "InputShapeError",
    "LoadReport",
    "ModelCfg",
    "ModelConfigError",
    "ModelError",
    "Recognizer",
    "UnknownModelError",
    "build_model",
    "denormalize",
    "list_models",
    "load_checkpoint",
    "map_seg_checkpoint_keys",
    "model_cfg",
    "overlay_heatmap",
    "read_checkpoint",
    "save_checkpoint",
    "save_gradcam",
]
