"""Training of the bleeding models with the authors' recipe (segmentation, then clips).

Public API::

    from models.training import (ClipTrainConfig, SegTrainConfig, train_clip_model,
                                 train_seg_model, read_annotation_list, patient_folds)

- :mod:`models.training.recipe`: weighted cross-entropy, SGD, cosine schedule with linear
  warm-up, gradient clipping (the authors' numbers).
- :mod:`models.training.data`: the authors' rawframe layout (clip folders of
  ``img_XXXXX.jpg`` and ``folder total_frames label`` lists) and mask PNG pairs.
- :mod:`models.training.augment`: seeded MONAI augmentation.
- :mod:`models.training.splits`: patient-level k-fold splits.
- :mod:`models.training.mining`: the segmenter's own false peaks, mined between epochs
  (hard negatives for its crops).
- :mod:`models.training.loops`: resumable training loops writing the authors' checkpoint
  layout ``{'meta', 'state_dict', 'optimizer'}``.

Importing this package builds nothing and reads no file.
"""

from __future__ import annotations

from models.training.data import (
    ClipDataset,
    ClipRecord,
    SegDataset,
    SegRecord,
    TrainingDataError,
    drop_unseen_bleeding,
    find_seg_pairs,
    read_annotation_list,
)
from models.training.loops import (
    ClipTrainConfig,
    SegTrainConfig,
    TrainResult,
    train_clip_model,
    train_seg_model,
)
from models.training.recipe import (
    AUTHORS_CLIP_CLASS_WEIGHTS,
    AUTHORS_SEG_CLASS_WEIGHTS,
    balanced_class_weights,
    build_optimizer,
    clip_gradients,
    warmup_cosine,
)
from models.training.splits import patient_folds, split_by_patient

__all__ = [
    "AUTHORS_CLIP_CLASS_WEIGHTS",
    "AUTHORS_SEG_CLASS_WEIGHTS",
    "ClipDataset",
    "ClipRecord",
    "ClipTrainConfig",
    "SegDataset",
    "SegRecord",
    "SegTrainConfig",
    "TrainResult",
    "TrainingDataError",
    "balanced_class_weights",
    "build_optimizer",
    "clip_gradients",
    "drop_unseen_bleeding",
    "find_seg_pairs",
    "patient_folds",
    "read_annotation_list",
    "split_by_patient",
    "train_clip_model",
    "train_seg_model",
    "warmup_cosine",
]
