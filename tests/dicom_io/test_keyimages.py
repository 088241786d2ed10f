"""Key frames as single-frame VL Endoscopic images with Source Image Sequence to the video."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_io.keyimages import write_key_images
from dicom_io.results import DEMO_DISCLAIMER, InvalidResultError
from dicom_io.sopclasses import VL_ENDOSCOPIC
from tests.dicom_io._writers_fixtures import (
    AUTHORS,
    CODECS,
    DEMO,
    assert_same_patient_and_study,
    assert_valid,
    make_events,
    make_sources,
    only_dcm_files,
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return make_sources(tmp_path_factory)


@pytest.mark.integration
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("n_events", [1, 3])
def test_key_images_validate_and_keep_pixels(sources, tmp_path, codec, n_events):
    src = sources[codec]
    frames = {e.key_frame: src.frames[e.key_frame - 1] for e in make_events(n_events)}
    refs = write_key_images(src.header, frames, DEMO, tmp_path)

    only_dcm_files(tmp_path)
    assert len(refs) == n_events
    assert len({r.series_instance_uid for r in refs}) == 1
    assert len({r.sop_instance_uid for r in refs}) == n_events
    for i, (number, ref) in enumerate(zip(sorted(frames), refs, strict=True), 1):
        assert assert_valid(ref.path) == []
        ds = dcmread(ref.path)
        assert ds.SOPClassUID == VL_ENDOSCOPIC == ref.sop_class_uid
        assert_same_patient_and_study(ds, src.header)
        assert ds.InstanceNumber == i
        np.testing.assert_array_equal(ds.pixel_array, frames[number])
        source_ref = ds.SourceImageSequence[0]
        assert source_ref.ReferencedSOPClassUID == src.header.SOPClassUID
        assert source_ref.ReferencedSOPInstanceUID == src.header.SOPInstanceUID
        assert source_ref.ReferencedFrameNumber == number
        assert ds.LossyImageCompression == ("01" if codec == "h264" else "00")
        assert ds.SeriesDescription == DEMO_DISCLAIMER
        assert DEMO_DISCLAIMER in ds.ImageComments


def test_no_events_no_images(sources, tmp_path):
    assert write_key_images(sources["h264"].header, {}, DEMO, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_given_uids_are_used(sources, tmp_path):
    src = sources["uncompressed"]
    uids = [generate_uid(), generate_uid()]
    series = generate_uid()
    refs = write_key_images(src.header, {4: src.frames[3], 2: src.frames[1]}, AUTHORS, tmp_path,
                            series_instance_uid=series, sop_instance_uids=uids,
                            series_number=77)
    assert [r.sop_instance_uid for r in refs] == uids  # in frame order: 2, then 4
    assert dcmread(refs[0].path).SourceImageSequence[0].ReferencedFrameNumber == 2
    assert {r.series_instance_uid for r in refs} == {series}
    assert "ImageComments" in dcmread(refs[0].path)
    assert DEMO_DISCLAIMER not in dcmread(refs[0].path).ImageComments


@pytest.mark.parametrize("frames, kwargs, match", [
    ({3: np.zeros((64, 80, 3), np.float32)}, {}, "must be uint8"),
    ({3: np.zeros((64, 80), np.uint8)}, {}, "must be uint8"),
    ({0: np.zeros((64, 80, 3), np.uint8)}, {}, "frames key must be a frame number"),
    ({3: np.zeros((64, 80, 3), np.uint8)}, {"sop_instance_uids": ["1.2", "1.3"]},
     "must be 1 distinct UIDs"),
    ({3: np.zeros((64, 80, 3), np.uint8)}, {"sop_instance_uids": ["01.2"]},
     r"sop_instance_uids\[0\] is not a valid DICOM UID"),
])
def test_bad_inputs_are_rejected(sources, tmp_path, frames, kwargs, match):
    with pytest.raises(InvalidResultError, match=match):
        write_key_images(sources["h264"].header, frames, DEMO, tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []
