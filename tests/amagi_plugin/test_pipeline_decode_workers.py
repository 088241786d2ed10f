"""AnalysisOptions.decode_workers: the analysis of a real encoded video does not depend on it."""

from __future__ import annotations

import numpy as np
import pytest

from amagi_plugin.pipeline import AnalysisOptions, BleedingAnalyzer
from dicom_io.encode import write_video_dicom
from dicom_io.video import open_video
from tests.amagi_plugin.test_pipeline import RednessNet, synthetic_frames

pytestmark = pytest.mark.timeout(120)


def test_decode_workers_give_the_same_analysis(tmp_path):
    fps = 25.0
    path = tmp_path / "bleed.dcm"
    write_video_dicom(synthetic_frames(int(6 * fps), fps, (2.0, 4.0)), path, fps=fps, gop=10)
    assert AnalysisOptions().decode_workers == 1
    results = []
    for workers in (1, 2, 3):
        options = AnalysisOptions(batch_size=4, decode_ahead=16, decode_workers=workers)
        analyzer = BleedingAnalyzer(RednessNet(), options, input_size=32)
        results.append(analyzer.analyze(open_video(path)))
    serial = results[0]
    assert serial.events, "the red patch should be found"
    for result in results[1:]:
        assert np.array_equal(result.probabilities, serial.probabilities)
        assert result.events == serial.events
        assert result.clips_computed == serial.clips_computed
