"""The bleeding SEG on video key frames (stack_notes §4 workaround): validity and round trip."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_io.results import DEMO_DISCLAIMER, InvalidResultError
from dicom_io.seg import read_bleeding_segmentation, write_bleeding_segmentation
from dicom_io.sopclasses import SEGMENTATION
from tests.dicom_io._writers_fixtures import (
    AUTHORS,
    CODECS,
    COLS,
    DEMO,
    ROWS,
    assert_same_patient_and_study,
    assert_valid,
    make_events,
    make_masks,
    make_sources,
    only_dcm_files,
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return make_sources(tmp_path_factory)


@pytest.mark.integration
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("n_events", [1, 3])
def test_seg_validates_and_round_trips(sources, tmp_path, codec, n_events):
    src = sources[codec]
    masks = make_masks(make_events(n_events), seed=n_events)
    ref = write_bleeding_segmentation(src.header, masks, DEMO, tmp_path)

    only_dcm_files(tmp_path)
    warnings = assert_valid(ref.path)  # no known false warning for SEG
    assert warnings == []
    ds = dcmread(ref.path)
    assert ds.SOPClassUID == SEGMENTATION and ref.sop_class_uid == SEGMENTATION
    assert ds.SegmentationType == "BINARY"
    assert_same_patient_and_study(ds, src.header)
    assert ds.SeriesDescription == DEMO_DISCLAIMER
    segment = ds.SegmentSequence[0]
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "50960005"

    # references point at the video's SOP class, instance and key frame numbers
    frames = sorted(masks)
    assert int(ds.NumberOfFrames) == len(frames)
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        source_ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert source_ref.ReferencedSOPClassUID == src.header.SOPClassUID
        assert source_ref.ReferencedSOPInstanceUID == src.header.SOPInstanceUID
        assert source_ref.ReferencedFrameNumber == frames[i]
        assert list(item.FrameContentSequence[0].DimensionIndexValues) == [1, i + 1]
    series_ref = ds.ReferencedSeriesSequence[0]
    assert series_ref.SeriesInstanceUID == src.header.SeriesInstanceUID
    assert series_ref.ReferencedInstanceSequence[0].ReferencedSOPClassUID == \
        src.header.SOPClassUID

    # highdicom reads it back with the exact masks, in frame order
    seg = hd.seg.segread(ref.path)
    pixels = seg.pixel_array.reshape(len(frames), ROWS, COLS)
    np.testing.assert_array_equal(pixels.astype(bool), np.stack([masks[f] for f in frames]))
    back = read_bleeding_segmentation(ref.path)
    assert sorted(back) == frames
    for f in frames:
        np.testing.assert_array_equal(back[f], masks[f])


def test_no_events_writes_no_seg(sources, tmp_path):
    assert write_bleeding_segmentation(sources["h264"].header, {}, DEMO, tmp_path) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_empty_mask_and_given_uids(sources, tmp_path):
    series_uid, sop_uid = generate_uid(), generate_uid()
    masks = {5: np.zeros((ROWS, COLS), np.uint8), 7: np.ones((ROWS, COLS), np.uint8)}
    ref = write_bleeding_segmentation(sources["uncompressed"].header, masks, AUTHORS, tmp_path,
                                      series_instance_uid=series_uid, sop_instance_uid=sop_uid,
                                      series_number=42)
    assert (ref.series_instance_uid, ref.sop_instance_uid) == (series_uid, sop_uid)
    assert_valid(ref.path)
    ds = dcmread(ref.path, stop_before_pixels=True)
    assert ds.SeriesNumber == 42 and DEMO_DISCLAIMER not in ds.SeriesDescription
    back = read_bleeding_segmentation(ref.path)
    assert not back[5].any() and back[7].all()


@pytest.mark.parametrize("masks, match", [
    ({3: np.zeros((ROWS, COLS + 1), bool)}, r"has shape \(64, 81\), the video frames are"),
    ({3: np.full((ROWS, COLS), 0.5)}, "must be boolean or 0/1 valued"),
    ({21: np.zeros((ROWS, COLS), bool)}, r"masks key must be a frame number in \[1, 20\]"),
    ([np.zeros((ROWS, COLS), bool)], "masks must be a mapping"),
])
def test_bad_masks_are_rejected(sources, tmp_path, masks, match):
    with pytest.raises(InvalidResultError, match=match):
        write_bleeding_segmentation(sources["h264"].header, masks, DEMO, tmp_path)
    assert list(tmp_path.iterdir()) == []
