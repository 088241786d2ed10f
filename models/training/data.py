"""Training data in the authors' layout: rawframe clip folders and mask PNGs.

Clips (mmaction2 ``RawframeDataset``): an annotation list holds one line per clip,
``folder total_frames label``, the folder relative to a data root (``data_prefix``) and
holding ``img_00001.jpg ... img_{total_frames:05d}.jpg``. A clip is ``clip_len`` frames
``frame_interval`` apart (``SampleFrames(8, 3, num_clips=1)``): in training it starts at a
random offset when the folder is longer than ``clip_len · frame_interval``, in validation
at the centred offset. ``amagi synth`` writes exactly this layout (``annotations.txt`` and
``cases.json`` with patient ids); user data prepared the authors' way is read the same way.

Segmentation: pairs ``<case>/frames/NAME.png`` (RGB) and ``<case>/masks/NAME.png``
(0 = background, > 0 = active bleeding); ``images/`` is accepted for ``frames/``. A temporal
segmenter (``frames`` > 1) reads the frame and its neighbours from ``<case>/rawframes/``
(``img_{k+1:05d}.jpg`` holds 0-based frame ``k``, as the mask names count), clamped to the
video's ends as the analysis clamps them.

Decoded frames are cached in memory by file identity (device, inode), so the hard-linked
frames of overlapping clip folders are decoded once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from models.errors import ModelError
from models.recognizer import centred_window
from models.training.augment import ClipAugment, SegAugment, freeze_clip

__all__ = [
    "ClipDataset",
    "ClipRecord",
    "FrameCache",
    "SegDataset",
    "SegRecord",
    "TrainingDataError",
    "drop_unseen_bleeding",
    "find_seg_pairs",
    "patient_map",
    "read_annotation_list",
]

log = logging.getLogger(__name__)


class TrainingDataError(ModelError):
    """Training data missing or not in the expected layout."""


@dataclass(frozen=True)
class ClipRecord:
    """One annotation line: clip folder (absolute), its frame count, label and patient."""

    folder: Path
    total_frames: int
    label: int
    patient: str


@dataclass(frozen=True)
class SegRecord:
    """One segmentation sample: RGB frame, mask, patient; ``stack``: for a temporal
    segmenter, the frames it sees, oldest first (the middle one is ``image``'s frame)."""

    image: Path
    mask: Path
    patient: str
    stack: tuple[Path, ...] = ()


def patient_map(root: Path) -> dict[str, str]:
    """Case folder name → patient id from ``root/cases.json`` (empty if there is none)."""
    index = root / "cases.json"
    if not index.is_file():
        return {}
    try:
        doc = json.loads(index.read_text())
        return {str(c["dir"]): str(c["patient_id"]) for c in doc["cases"]}
    except (ValueError, KeyError, TypeError) as e:
        raise TrainingDataError(f"{index} is not a valid dataset index: {e}") from e


def _patient_of(rel: str, patients: dict[str, str]) -> str:
    first = Path(rel).parts[0] if Path(rel).parts else rel
    return patients.get(first, first)


def read_annotation_list(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None,
                         ) -> list[ClipRecord]:
    """Read a ``folder total_frames label`` list.

    Parameters
    ----------
    path
        The list file.
    root
        Directory the folders are relative to (default: the list's directory). Patients
        come from ``root/cases.json`` when present, else from the first path component of
        each folder (the case folder).

    Raises
    ------
    TrainingDataError
        Missing file, malformed line, or missing clip folder.
    """
    p = Path(path)
    if not p.is_file():
        raise TrainingDataError(f"annotation list not found: {p}")
    base = Path(root) if root is not None else p.parent
    patients = patient_map(base)
    out = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        try:
            folder, total, label = parts[0], int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            raise TrainingDataError(
                f"{p}:{n}: expected 'folder total_frames label', got {line.strip()!r}") from None
        full = base / folder
        if not full.is_dir():
            raise TrainingDataError(f"{p}:{n}: clip folder not found: {full}")
        out.append(ClipRecord(full, total, label, _patient_of(folder, patients)))
    if not out:
        raise TrainingDataError(f"{p} lists no clips")
    return out


def drop_unseen_bleeding(records: Sequence[ClipRecord], min_pixels: float
                         ) -> list[ClipRecord]:
    """``records`` less the bleeding clips whose labelled frame shows fewer than
    ``min_pixels`` pixels of active bleeding.

    Such a clip is labelled bleeding rightly (the event is on) but nothing in it shows it: a
    source hidden, or not grown yet. A clip model cannot learn from it; a temporal refiner,
    which sees the whole event, can. ``amagi synth``'s layout says where the labelled frame
    is: the folder ``<case>/clips/<case>_fKKKKKK`` starts at frame K, the case's
    ``labels.json`` gives the label's offset into it (``clips.label_offset``) and the visible
    bleeding of every frame (``active_pixels``).

    Raises
    ------
    TrainingDataError
        A bleeding clip not in that layout, or a case without those entries.
    """
    pixels: dict[Path, tuple[list[float], int]] = {}
    out = []
    for r in records:
        if r.label != 1:
            out.append(r)
            continue
        case = r.folder.parent.parent
        start = r.folder.name.rpartition("_f")[2]
        if r.folder.parent.name != "clips" or not start.isdigit():
            raise TrainingDataError(f"{r.folder}: not an 'amagi synth' clip folder "
                                    "(<case>/clips/<case>_fKKKKKK)")
        if case not in pixels:
            try:
                doc = json.loads((case / "labels.json").read_text())
                pixels[case] = doc["active_pixels"], int(doc["clips"]["label_offset"])
            except (OSError, ValueError, KeyError, TypeError):
                raise TrainingDataError(f"{case}/labels.json gives no active_pixels (visible "
                                        "bleeding per frame) or clips.label_offset") from None
        visible, offset = pixels[case]
        frame = int(start) + offset
        if frame >= len(visible):
            raise TrainingDataError(f"{r.folder}: frame {frame} is past the case's "
                                    f"{len(visible)} active_pixels values")
        if visible[frame] >= min_pixels:
            out.append(r)
    log.info("left out %d of %d bleeding clips: their labelled frame shows fewer than %g "
             "pixels of bleeding", len(records) - len(out), sum(r.label == 1 for r in records),
             min_pixels)
    return out


def _stack(raw: Path, count: int, mask: Path, frames: int, step: int) -> tuple[Path, ...]:
    """The ``frames`` rawframes (``count`` of them in ``raw``) ``step`` apart centred on
    ``mask``'s frame, clamped."""
    try:
        k = int(mask.stem.rsplit("_", 1)[1]) - 1
    except (IndexError, ValueError):
        raise TrainingDataError(f"mask {mask} is not named img_NNNNN.png") from None
    if not 0 <= k < count:
        raise TrainingDataError(f"a temporal segmenter needs the frames around {mask}; "
                                f"{raw} holds {count} frames")
    paths = tuple(raw / f"img_{i + 1:05d}.jpg" for i in centred_window(k, frames, step, count))
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise TrainingDataError(f"{missing} is missing (needed around {mask})")
    return paths


def find_seg_pairs(root: str | os.PathLike[str], frames: int = 1,
                   frame_interval: int = 3) -> list[SegRecord]:
    """Every ``masks/NAME.png`` under ``root`` with its ``frames/NAME.png`` (or ``images/``).

    Parameters
    ----------
    frames, frame_interval
        For a temporal segmenter (``frames`` > 1, odd): each record also gets the
        ``frames`` rawframes ``frame_interval`` apart around the mask's frame.

    Raises
    ------
    TrainingDataError
        If no pair is found, a mask has no frame, or a temporal segmenter's frames are
        missing.
    """
    base = Path(root)
    if not base.is_dir():
        raise TrainingDataError(f"segmentation data folder not found: {base}")
    patients = patient_map(base)
    out = []
    for mask_dir in sorted(base.rglob("masks")):
        if not mask_dir.is_dir():
            continue
        case = mask_dir.parent
        images = next((case / d for d in ("frames", "images") if (case / d).is_dir()), None)
        raw = case / "rawframes"  # counted once a case, for a temporal segmenter only
        count = sum(1 for _ in raw.glob("img_*.jpg")) if frames > 1 and raw.is_dir() else 0
        for mask in sorted(mask_dir.glob("*.png")):
            if images is None or not (images / mask.name).is_file():
                raise TrainingDataError(f"mask {mask} has no image {case}/frames/{mask.name}")
            rel = case.relative_to(base).as_posix()
            stack = _stack(raw, count, mask, frames, frame_interval) if frames > 1 else ()
            out.append(SegRecord(images / mask.name, mask, _patient_of(rel or case.name,
                                                                          patients), stack))
    if not out:
        raise TrainingDataError(f"no masks/*.png with matching frames/ found under {base}")
    return out


class FrameCache:
    """Decoded RGB frames keyed by file identity, optionally resized on load.

    Parameters
    ----------
    short_side
        If set, frames are resized (bilinear) so the short side is at most this many pixels
        before caching (saves memory; augmentation crops from the cached frame).
    """

    def __init__(self, short_side: int | None = None) -> None:
        self.short_side = short_side
        self._frames: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._frames)

    def load(self, path: Path) -> np.ndarray:
        """``uint8 (H, W, 3)`` frame at ``path``."""
        try:
            st = path.stat()
        except OSError:
            raise TrainingDataError(f"frame not found: {path}") from None
        key = (st.st_dev, st.st_ino)
        frame = self._frames.get(key)
        if frame is None:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if self.short_side and min(im.size) > self.short_side:
                    s = self.short_side / min(im.size)
                    im = im.resize((round(im.size[0] * s), round(im.size[1] * s)),
                                   Image.BILINEAR)
                frame = np.asarray(im)
            self._frames[key] = frame
        return frame


def _item_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ClipDataset(Dataset):
    """Clips of an annotation list → ``(clip float32 (3, T, S, S), label int)``.

    Parameters
    ----------
    records
        From :func:`read_annotation_list`.
    size, mean, std
        The model's input size and normalisation (``model.default_cfg``).
    clip_len, frame_interval
        The authors' 8 and 3.
    train
        Seeded random sampling offset, crop and flip; else centred offset and centre crop.
    seed
        Augmentation seed; item ``i`` of epoch ``e`` always gets the same randomness.
    cache
        A shared :class:`FrameCache` (one is created if omitted).
    still_negatives
        Training only: the probability that a bleeding clip is replaced by its centre frame
        held still under camera-like motion (:func:`~models.training.augment.freeze_clip`) and
        labelled not bleeding. Each such pair differs only over time, so colour alone cannot
        fit them: the lever that teaches "flowing", not "red". 0 (the authors' recipe) = off.
    look_jitter
        Training only: strength of the per-clip look change
        (:class:`~models.training.augment.LookJitter`; 0 = off, the authors' recipe).
    look_on_device
        Training with look jitter only: items are ``(clip on the 0-255 scale, label, item
        seed)``, the look and normalisation left to :meth:`finish_batch` on the training
        device (a GPU's, where the loading processes would otherwise bound the epoch). The
        same looks as without; the sensor noise drawn there, per batch.
    """

    def __init__(self, records: Sequence[ClipRecord], size: int, mean: Sequence[float],
                 std: Sequence[float], clip_len: int = 8, frame_interval: int = 3,
                 train: bool = True, seed: int = 0, cache: FrameCache | None = None,
                 filename_tmpl: str = "img_{:05d}.jpg", still_negatives: float = 0.0,
                 look_jitter: float = 0.0, look_on_device: bool = False) -> None:
        if not 0.0 <= still_negatives < 1.0:
            raise ValueError(f"still_negatives must lie in [0, 1), got {still_negatives}")
        self.still_negatives = still_negatives
        self.records = list(records)
        self.clip_len, self.frame_interval = clip_len, frame_interval
        self.train, self.seed, self.epoch = train, seed, 0
        self.cache = cache or FrameCache()
        self.tmpl = filename_tmpl
        self.augment = ClipAugment(size, mean, std, train=train, look_jitter=look_jitter)
        self.look_on_device = bool(look_on_device and train and look_jitter > 0)

    def __len__(self) -> int:
        return len(self.records)

    def finish_batch(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """A batch of ``look_on_device`` items' clips (on the training device) and seeds →
        the normalised clips with their looks (:meth:`ClipAugment.finish_batch`)."""
        return self.augment.finish_batch(x, seeds)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def frame_indices(self, record: ClipRecord, rng: np.random.Generator | None) -> list[int]:
        """1-based frame numbers of the clip (``SampleFrames``; short folders loop)."""
        span = self.clip_len * self.frame_interval
        room = record.total_frames - span
        if room > 0:
            offset = int(rng.integers(0, room + 1)) if rng is not None else room // 2
        else:
            offset = 0
        return [(offset + k * self.frame_interval) % max(1, record.total_frames) + 1
                for k in range(self.clip_len)]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        r = self.records[i]
        seed = _item_seed(self.seed, self.epoch, i)
        rng = np.random.default_rng(seed) if self.train else None
        indices = self.frame_indices(r, rng)
        if (rng is not None and r.label == 1 and self.still_negatives
                and rng.random() < self.still_negatives):
            centre = self.cache.load(r.folder / self.tmpl.format(indices[len(indices) // 2]))
            return self._item(freeze_clip(centre, len(indices), rng), seed, 0)
        frames = np.stack([self.cache.load(r.folder / self.tmpl.format(k)) for k in indices])
        return self._item(frames, seed, r.label)

    def _item(self, frames: np.ndarray, seed: int, label: int
              ) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, int]:
        if self.look_on_device:
            return self.augment.deferred(frames, seed), label, seed
        return self.augment(frames, seed), label


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class SegDataset(Dataset):
    """Frame/mask pairs → ``(image float32 (3·K, C, C), target int64 (C, C))`` (see
    :class:`~models.training.augment.SegAugment`; ``crop`` defaults to ``size``); K is 1, or
    the length of the records' ``stack`` for a temporal segmenter; ``look_jitter`` is the
    training look change's strength (0 = off); ``moving_negatives`` the share of training
    crops centred on moving non-bleeding pixels (temporal stacks only); ``peak_negatives``
    the share centred on each frame's false peak, once :meth:`set_peaks` has given them
    (:func:`models.training.mining.false_peaks`)."""

    def __init__(self, records: Sequence[SegRecord], size: int, mean: Sequence[float],
                 std: Sequence[float], train: bool = True, seed: int = 0,
                 crop: int | None = None, pos_fraction: float = 0.5,
                 look_jitter: float = 0.0, moving_negatives: float = 0.0,
                 peak_negatives: float = 0.0) -> None:
        self.records = list(records)
        self.train, self.seed, self.epoch = train, seed, 0
        self.augment = SegAugment(size, mean, std, train=train, crop=crop,
                                  pos_fraction=pos_fraction, look_jitter=look_jitter,
                                  moving_negatives=moving_negatives,
                                  peak_negatives=peak_negatives)
        self.peaks: dict[int, tuple[int, int]] = {}
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_peaks(self, peaks: dict[int, tuple[int, int]]) -> None:
        """Each item's false peak ``(y, x)`` in :meth:`whole`'s coordinates (items left
        out have none)."""
        self.peaks = dict(peaks)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._cache:
            r = self.records[i]
            try:
                rgb = np.concatenate([_read_rgb(f) for f in r.stack or (r.image,)], axis=-1)
                with Image.open(r.mask) as im:
                    mask = np.asarray(im.convert("L")) > 0
            except OSError as e:
                raise TrainingDataError(f"cannot read {r.image} / {r.mask}: {e}") from e
            if mask.shape != rgb.shape[:2]:
                raise TrainingDataError(f"mask {r.mask} is {mask.shape}, frame is "
                                        f"{rgb.shape[:2]}")
            self._cache[i] = (rgb, mask)
        return self._cache[i]

    def whole(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``i``'s whole frame at the model's scale, normalised, and its mask."""
        return self.augment.whole(*self._load(i))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, mask = self._load(i)
        return self.augment(rgb, mask, _item_seed(self.seed, self.epoch, i),
                            peak=self.peaks.get(i))


def subset(records: Sequence, keep: Callable[[object], bool]) -> list:
    """Records for which ``keep(record)`` is true (helper for patient splits)."""
    return [r for r in records if keep(r)]
