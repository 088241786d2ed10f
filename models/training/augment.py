"""Seeded MONAI preprocessing for training and validation clips and segmentation frames.

Clips are ``float32 (3, T, H, W)`` on the 0-255 scale. MONAI treats every axis after the
channel as spatial, so a clip is viewed as ``(3·T, H, W)`` while it is cropped, resized and
flipped: every frame of a clip gets the same crop and flip. Normalisation is
``(x - mean) / std`` per RGB channel with the model's constants (0-255 scale).

Training (the authors' pipeline, scaled down): random resized crop (a random box of
``crop_scale``–100 % of each side, any aspect), resize to ``size × size``, horizontal flip
with probability 0.5, normalisation. Validation: short side to ``size``, centre crop,
normalisation, the same as inference (:mod:`amagi_plugin.transforms`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    CenterSpatialCrop,
    Compose,
    GaussianSmooth,
    RandCropByPosNegLabeld,
    RandFlip,
    RandFlipd,
    RandScaleCrop,
    Resize,
)

__all__ = [
    "LOOK_FIELDS",
    "ClipAugment",
    "LookJitter",
    "SegAugment",
    "freeze_clip",
    "resize_short",
    "resize_short_centre_crop",
    "resize_short_side",
    "short_side_shape",
    "untracked",
]


@contextmanager
def untracked() -> Iterator[None]:
    """MONAI transforms return plain tensors inside (no ``MetaTensor`` bookkeeping): the
    same values at half the cost of a clip's crop and resize. Training samples carry no
    metadata that anything reads; the previous setting comes back afterwards."""
    before = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(before)


def freeze_clip(frame: np.ndarray, length: int, rng: np.random.Generator,
                max_speed: float = 1.5, noise: float = 2.5) -> np.ndarray:
    """A clip of ``length`` frames showing one still ``frame`` under camera-like motion.

    Every frame is ``frame`` translated by a whole number of pixels along a straight drift
    (speed up to ``max_speed`` pixels per frame on each axis) plus up to one pixel of shake,
    with the border replicated, plus fresh sensor-like noise per frame (Gaussian, standard
    deviation drawn up to ``noise`` grey levels). Nothing in the scene grows or flows, so
    whatever ``frame`` shows, the clip is not active bleeding: a hard negative whose every
    single frame looks like its source clip's (blood that moves only with the camera). The
    noise keeps it from being told apart by pixels that never change at all, which no real
    video has.

    Parameters
    ----------
    frame
        ``uint8 (H, W, 3)``.
    length
        Frames in the clip (the model's ``clip_len``).
    rng
        Source of the drift, shake and noise.
    noise
        Largest per-frame noise standard deviation (0: exact copies of ``frame``).

    Returns
    -------
    numpy.ndarray
        ``uint8 (length, H, W, 3)``.
    """
    h, w = frame.shape[:2]
    v = rng.uniform(-max_speed, max_speed, 2)
    steps = np.arange(length) - (length - 1) / 2.0
    shifts = np.round(steps[:, None] * v[None, :] + rng.integers(-1, 2, (length, 2))).astype(int)
    m = int(np.abs(shifts).max()) + 1
    padded = np.pad(frame, ((m, m), (m, m), (0, 0)), mode="edge")
    clip = np.stack([padded[m + dy:m + dy + h, m + dx:m + dx + w] for dx, dy in shifts])
    if noise <= 0:
        return clip
    sigma = rng.uniform(0.5, max(noise, 0.5))
    noisy = clip + rng.normal(0.0, sigma, clip.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


#: Length of one sample's look as :meth:`LookJitter.draw` gives it.
LOOK_FIELDS = 7

#: Second word of the look jitter's seed: its own random stream, apart from the one a
#: dataset draws the same sample's frame offsets from with the same seed.
_LOOK_STREAM = 0x100C
_MOVING_STREAM = 0x30BE  # SegAugment's moving-negative crops, apart from the rest
_PEAK_STREAM = 0x9EAC  # its false-peak crops


class LookJitter:
    """Random change of a video's *look*, the same for every frame of one sample.

    What a camera chain varies and a bleeding detector must ignore: white balance (a gain per
    RGB channel), exposure, tone curve (gamma), saturation, focus blur; plus sensor noise,
    fresh in every frame. Each factor is drawn uniformly in log space, ``strength`` scaling
    every range (1 = white balance ×0.8–1.25 per channel, exposure ×0.74–1.35, gamma
    0.7–1.42, saturation ×0.67–1.5, Gaussian blur σ up to 1.5 px on half the samples, noise σ
    up to 3 grey levels). None of it moves a pixel, so masks and labels stay as they are, and
    a still frame stays still: only frame-to-frame change can tell flowing blood from blood
    that is merely there. ``strength`` 0 returns the input unchanged (the authors' recipe).

    ``__call__(x float (K, 3, H, W) on the 0-255 scale: K frames; rng)`` returns the same
    shape and scale, clipped to 0-255.
    """

    #: Largest accepted ``strength``.
    MAX_STRENGTH = 2.0

    def __init__(self, strength: float = 1.0) -> None:
        if not 0.0 <= strength <= self.MAX_STRENGTH:
            raise ValueError(f"look jitter strength must lie in [0, {self.MAX_STRENGTH:g}], "
                             f"got {strength}")
        self.strength = float(strength)

    def for_sample(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """:meth:`__call__` with the look drawn from sample ``seed``'s own stream (apart from
        the one a dataset draws that sample's frame offsets from with the same seed)."""
        return self(x, np.random.default_rng([int(seed), _LOOK_STREAM]))

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.strength == 0.0:
            return x
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (frames, 3, H, W), got shape {tuple(x.shape)}")
        return self.apply(x, self.draw(rng), rng)

    def draw(self, rng: np.random.Generator) -> torch.Tensor:
        """One sample's look, ``float64 (LOOK_FIELDS,)``: the RGB gains (white balance times
        exposure, each exactly a float32), gamma, saturation, blur σ (0: none) and noise σ."""
        s = self.strength

        def log_u(half_width: float) -> float:
            return math.exp(rng.uniform(-half_width * s, half_width * s))

        gains = torch.tensor([log_u(0.22) for _ in range(3)]) * log_u(0.3)
        gamma, saturation = log_u(0.35), log_u(0.4)
        blur = rng.uniform(0.2, 1.5) * s if rng.random() < 0.5 else 0.0
        noise = rng.uniform(0.0, 3.0 * s)
        return torch.cat([gains.double(), torch.tensor([gamma, saturation, blur, noise],
                                                      dtype=torch.float64)])

    def apply(self, x: torch.Tensor, look: torch.Tensor, rng: np.random.Generator | None
              ) -> torch.Tensor:
        """``look`` (from :meth:`draw`) on the frames ``x (K, 3, H, W)``, its sensor noise
        drawn from ``rng`` (``None`` only for a look without noise)."""
        g0, g1, g2, gamma, saturation, blur, noise = look.tolist()
        gains = torch.tensor([g0, g1, g2], dtype=torch.float32)
        y = self._toned(x, gains[None, :, None, None], gamma, saturation)
        if blur > 0.0:
            y = self._blurred(y, blur)
        y = y * 255.0
        if noise > 0.0:
            if rng is None:
                raise ValueError("a look with sensor noise needs a random generator")
            y = y + self.noise(y.shape, noise, rng).to(y.dtype)
        return y.clamp(0.0, 255.0)

    @staticmethod
    def _toned(x: torch.Tensor, gains: torch.Tensor, gamma: float | torch.Tensor,
               saturation: float | torch.Tensor) -> torch.Tensor:
        """White balance and exposure (``gains``, broadcast over ``x``'s RGB axis 1), tone
        curve and saturation, on the 0-1 scale (``x`` on 0-255)."""
        y = (x / 255.0 * gains).clamp(0.0, 1.0) ** gamma
        grey = y.mean(dim=1, keepdim=True)
        return grey + (y - grey) * saturation

    @staticmethod
    def _blurred(y: torch.Tensor, sigma: float) -> torch.Tensor:
        """Every ``(H, W)`` plane of ``y`` on its own (MONAI: channel-first, 2-D)."""
        planes = GaussianSmooth(sigma=sigma)(y.reshape(-1, *y.shape[-2:]))
        return torch.as_tensor(planes).as_subclass(torch.Tensor).reshape(y.shape)

    @staticmethod
    def apply_batch(x: torch.Tensor, looks: torch.Tensor, generator: torch.Generator
                    ) -> torch.Tensor:
        """Each sample's look on a batch of clips ``x (B, 3, T, H, W)``, on ``x``'s device:
        ``looks (B, LOOK_FIELDS)`` from :meth:`draw`, the sensor noise drawn by
        ``generator`` (on that device). The arithmetic of :meth:`apply` broadcast over the
        batch (within float32 rounding of it; the blur per sample), so a GPU does the work
        a loading process would otherwise do per clip."""
        if x.dim() != 5 or x.shape[1] != 3 or looks.shape != (x.shape[0], LOOK_FIELDS):
            raise ValueError(f"expected clips (B, 3, T, H, W) and looks (B, {LOOK_FIELDS}), "
                             f"got {tuple(x.shape)} and {tuple(looks.shape)}")
        per = looks.to(device=x.device, dtype=torch.float32)

        def each(k: int) -> torch.Tensor:
            return per[:, k].view(-1, 1, 1, 1, 1)

        y = LookJitter._toned(x, per[:, :3].view(-1, 3, 1, 1, 1), each(3), each(4))
        for i, sigma in enumerate(looks[:, 5].tolist()):
            if sigma > 0.0:
                y[i] = LookJitter._blurred(y[i], sigma)
        y = y * 255.0
        noise = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return (y + noise * each(6)).clamp(0.0, 255.0)

    @staticmethod
    def noise(shape: tuple[int, ...] | torch.Size, sigma: float, rng: np.random.Generator
              ) -> torch.Tensor:
        """Gaussian sensor noise of standard deviation ``sigma``, float32, drawn by torch from
        a seed ``rng`` gives (2.5 times faster than numpy's float64 draws)."""
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return torch.randn(tuple(shape), generator=gen) * sigma


def short_side_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """The ``(H, W)`` that :func:`resize_short_side` gives an ``h`` × ``w`` image."""
    scale = size / min(h, w)
    return max(size, round(h * scale)), max(size, round(w * scale))


def resize_short_side(img: torch.Tensor, size: int) -> torch.Tensor:
    """``(C, H, W)`` resized so the shorter side is ``size`` pixels (bilinear, antialiased),
    in its own dtype; ``img`` itself when it has that size already.

    A float image is resized in float. A uint8 image (CPU) goes through torch's fixed-point
    kernel for uint8, the same filter rounded to uint8: several times cheaper than in float
    (a 720p frame's 2.8 M values are never made float), within a grey level of it.
    """
    h, w = img.shape[-2:]
    new = short_side_shape(h, w, size)
    if new == (h, w):
        return img
    return F.interpolate(img[None], size=new, mode="bilinear", align_corners=False,
                         antialias=True)[0]


def resize_short(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(C, H, W)``: scale so the short side is ``size`` (bilinear, antialiased), in float."""
    return resize_short_side(x.float(), size)


def resize_short_centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(C, H, W)``: scale the short side to ``size`` (bilinear, antialiased), centre crop."""
    return CenterSpatialCrop((size, size))(resize_short(x, size)).as_tensor()


class ClipAugment:
    """Clip preprocessing; ``__call__(frames uint8 (T, H, W, 3), seed) -> (3, T, S, S)``.

    Parameters
    ----------
    size
        Output side in pixels.
    mean, std
        RGB normalisation constants (0-255 scale).
    train
        Random resized crop + flip (seeded per call) if True, else resize + centre crop.
    crop_scale
        Smallest crop side as a fraction of the frame side.
    look_jitter
        Training only: strength of a :class:`LookJitter` drawn per clip (0 = off, the
        authors' recipe).
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float],
                 train: bool = True, crop_scale: float = 0.7, look_jitter: float = 0.0) -> None:
        self.size, self.train = int(size), train
        self.look = LookJitter(look_jitter)
        # (3, 1, 1, 1): one broadcast over a (3, T, S, S) clip. The same float32 arithmetic
        # as MONAI's NormalizeIntensity(channel_wise=True) over its 3·T channels, bit for
        # bit, at a fortieth of its time (its per-channel loop cost ~40 % of a clip's loading)
        self.mean = torch.as_tensor(np.asarray(mean, np.float32)).view(3, 1, 1, 1)
        self.std = torch.as_tensor(np.asarray(std, np.float32)).view(3, 1, 1, 1)
        self.random = Compose([
            RandScaleCrop(roi_scale=crop_scale, max_roi_scale=1.0, random_size=True),
            Resize((self.size, self.size), mode="bilinear", anti_aliasing=False),
            RandFlip(prob=0.5, spatial_axis=1),
        ])

    def __call__(self, frames: np.ndarray, seed: int = 0) -> torch.Tensor:
        t = frames.shape[0]
        flat = self._cropped(frames, seed)
        if self.train and self.look.strength:
            frames_first = flat.reshape(3, t, *flat.shape[1:]).transpose(0, 1)
            flat = self.look.for_sample(frames_first, seed).transpose(0, 1).reshape(flat.shape)
        return self._normalised(flat, t)

    def deferred(self, frames: np.ndarray, seed: int = 0) -> torch.Tensor:
        """Training: the clip cropped, resized and flipped as :meth:`__call__` does, on the
        0-255 scale, ``(3, T, S, S)``: its look and normalisation are left to
        :meth:`finish_batch` on the training device."""
        if not self.train:
            raise ValueError("only training clips defer their look (validation has none)")
        t = frames.shape[0]
        return torch.as_tensor(self._cropped(frames, seed)).reshape(
            3, t, self.size, self.size).contiguous()

    def finish_batch(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """:meth:`deferred` clips ``x (B, 3, T, S, S)`` of items ``seeds`` → what
        :meth:`__call__` gives them: each item's look (the one :meth:`__call__` draws from
        the same seed; its sensor noise drawn on ``x``'s device from one stream per batch)
        and the normalisation, on ``x``'s device."""
        items = [int(k) for k in seeds.tolist()]
        if self.look.strength:
            looks = torch.stack([self.look.draw(np.random.default_rng([k, _LOOK_STREAM]))
                                 for k in items])
            state = int(np.random.SeedSequence(items).generate_state(1)[0])
            gen = torch.Generator(device=x.device).manual_seed(state)
            x = LookJitter.apply_batch(x, looks, gen)
        mean, std = (v.to(x.device).view(1, 3, 1, 1, 1) for v in (self.mean, self.std))
        return ((x - mean) / std).contiguous()

    def _cropped(self, frames: np.ndarray, seed: int) -> torch.Tensor:
        """``(3·T, S, S)`` on the 0-255 scale: the random crop and flip (training) or the
        centre crop."""
        t = frames.shape[0]
        x = torch.as_tensor(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float()  # 3,T,H,W
        flat = x.reshape(3 * t, *x.shape[2:])
        if self.train:
            return self._random_crop(flat, seed)
        return resize_short_centre_crop(flat, self.size)

    def _random_crop(self, flat: torch.Tensor, seed: int) -> torch.Tensor:
        """The seeded random resized crop and flip of a ``(3·T, H, W)`` clip."""
        self.random.set_random_state(seed=int(seed) % (2**32))
        with untracked():
            return torch.as_tensor(self.random(flat)).as_subclass(torch.Tensor)

    def _normalised(self, flat: torch.Tensor, t: int) -> torch.Tensor:
        """``(3·T, S, S)`` on the 0-255 scale → ``(3, T, S, S)`` normalised per RGB channel."""
        out = torch.as_tensor(flat).as_subclass(torch.Tensor).reshape(3, t, self.size, self.size)
        return ((out - self.mean) / self.std).contiguous()


class SegAugment:
    """Frame + mask preprocessing; ``__call__(rgb (H, W, 3·K), mask (H, W), seed)`` returns
    ``(image float32 (3·K, C, C) normalised, target int64 (C, C))``. K > 1 stacked frames (a
    temporal segmenter's input) get the same crop and flip and each the RGB normalisation.

    Frames are first scaled so the short side is ``size`` (the scale the model sees at
    inference). Training then takes a ``crop``-pixel square (default ``size``) centred on a
    bleeding pixel with probability ``pos_fraction``, else on a background pixel (MONAI
    ``RandCropByPosNegLabeld``; bleeding is sparse), and flips it horizontally with
    probability 0.5, and changes the look (:class:`LookJitter`, all K frames alike) with
    strength ``look_jitter`` (0 = off). Validation centre-crops ``size × size``.

    ``moving_negatives`` (temporal stacks only): the share of training crops centred instead
    on a pixel that changes over the stack but is not bleeding, one of the most-changing
    tenth of them (instruments and stained jaws that move, camera motion at edges, flowing
    irrigation): the hard negatives of a segmenter that reads change, which random
    background crops seldom centre on.

    ``peak_negatives``: the share of training crops centred instead on the sample's *false
    peak* when one is given (``__call__(..., peak=(y, x))``, in the coordinates of
    :meth:`whole`): the place where the segmenter itself, in its last mining, scored the
    highest bleeding probability away from any bleeding (:mod:`models.training.mining`).
    Drawn first, from a stream of its own, so the other crops keep their seeds.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float],
                 train: bool = True, crop: int | None = None,
                 pos_fraction: float = 0.5, look_jitter: float = 0.0,
                 moving_negatives: float = 0.0, peak_negatives: float = 0.0) -> None:
        if not 0.0 < pos_fraction < 1.0:
            raise ValueError(f"pos_fraction must be in (0, 1), got {pos_fraction}")
        if not 0.0 <= moving_negatives < 1.0:
            raise ValueError(f"moving_negatives must be in [0, 1), got {moving_negatives}")
        if not 0.0 <= peak_negatives < 1.0:
            raise ValueError(f"peak_negatives must be in [0, 1), got {peak_negatives}")
        self.size, self.train = int(size), train
        self.peak_negatives = float(peak_negatives)
        self.crop = int(crop or size)
        self.moving_negatives = float(moving_negatives)
        self.look = LookJitter(look_jitter)
        self.mean = torch.as_tensor(np.asarray(mean, np.float32)).view(1, 3, 1, 1)
        self.std = torch.as_tensor(np.asarray(std, np.float32)).view(1, 3, 1, 1)
        self.random = Compose([
            RandCropByPosNegLabeld(("image", "mask"), label_key="mask",
                                   spatial_size=(self.crop, self.crop), pos=pos_fraction,
                                   neg=1.0 - pos_fraction,
                                   num_samples=1, allow_smaller=True),
            RandFlipd(("image", "mask"), prob=0.5, spatial_axis=1),
        ])

    def _scaled(self, rgb: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(image float32 (3·K, H', W') 0-255, mask float32 (1, H', W'), K)`` at the
        model's scale (short side ``size``), not cropped."""
        image = torch.as_tensor(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)
        frames, odd = divmod(image.shape[0], 3)
        if odd or not frames:
            raise ValueError(f"expected RGB frames stacked on the last axis, got shape "
                             f"{tuple(np.shape(rgb))}")
        m = torch.as_tensor((np.asarray(mask) > 0).astype(np.float32))[None]
        both = resize_short(torch.cat([image, m]), self.size)
        return both[:-1], (both[-1:] >= 0.5).float(), frames

    def _normalised(self, image: torch.Tensor, frames: int) -> torch.Tensor:
        """Each frame's RGB normalised: one broadcast over ``(K, 3, H, W)``, bit for bit
        MONAI's ``NormalizeIntensity(channel_wise=True)`` over the 3·K channels."""
        x = torch.as_tensor(image).as_subclass(torch.Tensor).float()
        stack = x.reshape(frames, 3, *x.shape[1:])
        return ((stack - self.mean) / self.std).reshape(x.shape).contiguous()

    def whole(self, rgb: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole frame at the model's scale, normalised, and its bleeding mask:
        ``(image float32 (3·K, H', W'), target bool (H', W'))``; what mining scores."""
        image, m, frames = self._scaled(rgb, mask)
        return self._normalised(image, frames), m[0] >= 0.5

    def __call__(self, rgb: np.ndarray, mask: np.ndarray, seed: int = 0,
                 peak: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        image, m, frames = self._scaled(rgb, mask)
        if self.train:
            chosen = self._peak_crop(image, m, peak, seed)
            if chosen is None:
                chosen = self._moving_crop(image, m, frames, seed)
            if chosen is not None:
                image, m = chosen
            else:
                self.random.set_random_state(seed=int(seed) % (2**32))
                with warnings.catch_warnings(), untracked():  # no bleeding: background crops
                    warnings.filterwarnings("ignore", message="Num foregrounds 0")
                    out = self.random({"image": image, "mask": m})
                d = out[0] if isinstance(out, list) else out
                image, m = (torch.as_tensor(d["image"]).as_subclass(torch.Tensor),
                            torch.as_tensor(d["mask"]))
            if self.look.strength:
                stack = image.reshape(frames, 3, *image.shape[1:])
                image = self.look.for_sample(stack, seed).reshape(image.shape)
        else:
            image = CenterSpatialCrop((self.size, self.size))(image)
            m = CenterSpatialCrop((self.size, self.size))(m)
        target = (torch.as_tensor(m).as_subclass(torch.Tensor)[0] >= 0.5).long()
        return self._normalised(image, frames), target

    def _peak_crop(self, image: torch.Tensor, m: torch.Tensor, peak: tuple[int, int] | None,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A flipped-or-not crop centred on ``peak`` for a share ``peak_negatives`` of the
        samples that have one; None for the others."""
        if not self.peak_negatives or peak is None:
            return None
        rng = np.random.default_rng([int(seed) % (2**32), _PEAK_STREAM])
        if rng.random() >= self.peak_negatives:
            return None
        return self._crop_around(image, m, int(peak[0]), int(peak[1]), rng)

    def _crop_around(self, image: torch.Tensor, m: torch.Tensor, y: int, x: int,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``crop``-pixel square centred on ``(y, x)`` (shifted inside the frame),
        flipped horizontally with probability 0.5."""
        h, w = image.shape[1:]
        ch, cw = min(self.crop, h), min(self.crop, w)
        top = min(max(0, y - ch // 2), h - ch)
        left = min(max(0, x - cw // 2), w - cw)
        image = image[:, top:top + ch, left:left + cw]
        m = m[:, top:top + ch, left:left + cw]
        if rng.random() < 0.5:
            image, m = image.flip(-1), m.flip(-1)
        return image, m

    def _moving_crop(self, image: torch.Tensor, m: torch.Tensor, frames: int, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A flipped-or-not crop centred on a moving non-bleeding pixel, for a share
        ``moving_negatives`` of the samples of a temporal stack; None for the others (and
        when nothing but bleeding moves)."""
        if not self.moving_negatives or frames < 2:
            return None
        rng = np.random.default_rng([int(seed) % (2**32), _MOVING_STREAM])
        if rng.random() >= self.moving_negatives:
            return None
        stack = image.reshape(frames, 3, *image.shape[1:])
        change = (stack - stack[frames // 2]).abs().sum(dim=1).amax(dim=0)
        not_bleeding = m[0] < 0.5
        if not bool(not_bleeding.any()):
            return None
        floor = torch.quantile(change[not_bleeding], 0.9)
        candidates = torch.nonzero(not_bleeding & (change >= floor) & (change > 0))
        if len(candidates) == 0:
            return None
        y, x = candidates[int(rng.integers(len(candidates)))].tolist()
        return self._crop_around(image, m, y, x, rng)
