"""The Key Object Selection "Of Interest", and every result object written together."""

from __future__ import annotations

import copy

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_io.keyimages import write_key_images
from dicom_io.kos import write_key_object_selection
from dicom_io.results import DEMO_DISCLAIMER, InstanceRef, InvalidResultError
from dicom_io.seg import write_bleeding_segmentation
from dicom_io.sopclasses import KEY_OBJECT_SELECTION, VL_ENDOSCOPIC
from dicom_io.sr import read_bleeding_report, write_bleeding_report
from dicom_io.validate import run_dsrdump
from tests.dicom_io._writers_fixtures import (
    CODECS,
    DEMO,
    SR_KNOWN_WARNINGS,
    assert_same_patient_and_study,
    assert_valid,
    make_events,
    make_index,
    make_masks,
    make_sources,
    only_dcm_files,
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return make_sources(tmp_path_factory)


def _key_images(src, events, directory):
    frames = {e.key_frame: src.frames[e.key_frame - 1] for e in events}
    return write_key_images(src.header, frames, DEMO, directory)


@pytest.mark.integration
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("n_events", [1, 3])
def test_kos_lists_key_frames_and_images(sources, tmp_path, codec, n_events):
    src = sources[codec]
    events = make_events(n_events)
    images = _key_images(src, events, tmp_path)
    key_frames = [e.key_frame for e in events]
    ref = write_key_object_selection(src.header, key_frames[::-1], images, DEMO, tmp_path)

    only_dcm_files(tmp_path)
    assert assert_valid(ref.path) == []
    ds = dcmread(ref.path)
    assert ds.SOPClassUID == KEY_OBJECT_SELECTION == ref.sop_class_uid
    assert_same_patient_and_study(ds, src.header)
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == \
        ("113000", "DCM", "Of Interest")
    items = [c for c in ds.ContentSequence if c.ValueType == "IMAGE"]
    video_items = [c.ReferencedSOPSequence[0] for c in items
                   if c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID ==
                   src.header.SOPInstanceUID]
    assert [v.ReferencedFrameNumber for v in video_items] == sorted(key_frames)
    assert all(v.ReferencedSOPClassUID == src.header.SOPClassUID for v in video_items)
    image_items = [c.ReferencedSOPSequence[0] for c in items
                   if c.ReferencedSOPSequence[0].ReferencedSOPClassUID == VL_ENDOSCOPIC]
    assert len(items) == len(video_items) + len(image_items)
    assert [i.ReferencedSOPInstanceUID for i in image_items] == \
        [r.sop_instance_uid for r in images]
    description = next(c.TextValue for c in ds.ContentSequence
                       if c.ConceptNameCodeSequence[0].CodeValue == "113012")
    assert DEMO_DISCLAIMER in description
    # every referenced instance is listed as evidence, by series
    kos = hd.ko.KeyObjectSelectionDocument.from_dataset(ds)
    for r in images:
        assert kos.resolve_reference(r.sop_instance_uid) == \
            (r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid)
    assert kos.resolve_reference(src.header.SOPInstanceUID)[1] == src.header.SeriesInstanceUID
    assert "(VVe image,," in run_dsrdump(ref.path)


def test_no_events_no_kos(sources, tmp_path):
    assert write_key_object_selection(sources["h264"].header, [], [], DEMO, tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_kos_rejects_bad_references(sources, tmp_path):
    src = sources["h264"]
    images = _key_images(src, make_events(1), tmp_path)
    foreign = InstanceRef(generate_uid(), generate_uid(), generate_uid(), VL_ENDOSCOPIC)
    with pytest.raises(InvalidResultError, match="not the video's study"):
        write_key_object_selection(src.header, [4], [foreign], DEMO, tmp_path)
    with pytest.raises(InvalidResultError, match="key_images or documents were given without key_frames"):
        write_key_object_selection(src.header, [], images, DEMO, tmp_path)
    with pytest.raises(InvalidResultError, match=r"key_frames\[0\] must be a frame number"):
        write_key_object_selection(src.header, [99], images, DEMO, tmp_path)
    with pytest.raises(InvalidResultError, match="sop_instance_uid is not a valid DICOM UID"):
        bad = InstanceRef(images[0].study_instance_uid, images[0].series_instance_uid, "x",
                          VL_ENDOSCOPIC)
        write_key_object_selection(src.header, [4], [bad], DEMO, tmp_path)
    assert len(list(tmp_path.iterdir())) == 1  # only the key image written above


@pytest.mark.integration
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("n_events", [0, 1, 3])
def test_all_results_share_the_source_study(sources, tmp_path, codec, n_events):
    """SR, SEG, key images and KOS for one video: one study, new series, fresh UIDs."""
    src = sources[codec]
    before = copy.deepcopy(src.header)
    events = make_events(n_events)
    sr = write_bleeding_report(src.header, events, make_index(events), DEMO, tmp_path)
    seg = write_bleeding_segmentation(src.header, make_masks(events), DEMO, tmp_path)
    images = _key_images(src, events, tmp_path)
    kos = write_key_object_selection(src.header, [e.key_frame for e in events], images, DEMO,
                                     tmp_path)
    written = [sr, *images] + ([seg, kos] if n_events else [])
    if n_events == 0:
        assert (seg, kos, images) == (None, None, [])
    only_dcm_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        sorted(f"{r.sop_instance_uid}.dcm" for r in written)
    for r in written:
        assert r.study_instance_uid == src.header.StudyInstanceUID
        assert r.series_instance_uid != src.header.SeriesInstanceUID
        assert_valid(r.path, SR_KNOWN_WARNINGS if r is sr else ())
        assert_same_patient_and_study(dcmread(r.path, stop_before_pixels=True), src.header)
    series = {r.series_instance_uid for r in written}
    assert len(series) == (1 if n_events == 0 else 4)  # SR, SEG, key images, KOS
    assert len({r.sop_instance_uid for r in written}) == len(written)
    assert read_bleeding_report(sr.path).events == tuple(events)
    assert src.header == before  # the writers never modify the source header
