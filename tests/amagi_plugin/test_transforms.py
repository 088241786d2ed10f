"""amagi_plugin.transforms.FrameToTensor: the frame's values, channel-first, whatever buffer
holds them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from amagi_plugin.transforms import FrameToTensor


def test_a_read_only_frame_converts_like_a_writable_one_without_a_warning() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    locked = frame.copy()
    locked.flags.writeable = False
    want = torch.tensor(frame.transpose(2, 0, 1).tolist(), dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "not writable" warning would fail here
        got = [FrameToTensor()(f) for f in (frame, locked, frame[:, ::-1][:, ::-1],
                                            torch.from_numpy(frame))]
    for t in got:
        assert t.dtype == torch.float32 and torch.equal(t, want)
    with pytest.raises(ValueError, match="expected an RGB frame"):
        FrameToTensor()(frame[..., :2])
