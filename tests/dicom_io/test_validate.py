"""The dciodvfy / dsrdump wrappers, on real files that pass and fail."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread

from dicom_io.keyimages import write_key_images
from dicom_io.validate import (
    ValidatorUnavailableError,
    parse_dciodvfy,
    run_dciodvfy,
    run_dsrdump,
    unexpected_warnings,
)
from tests.dicom_io._writers_fixtures import DEMO, make_sources


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return make_sources(tmp_path_factory)


@pytest.mark.integration
def test_valid_video_passes(sources):
    for src in sources.values():
        result = run_dciodvfy(src.path)
        assert result.ok and result.errors == [] and result.warnings == []


@pytest.mark.integration
def test_broken_instance_reports_errors(sources, tmp_path):
    src = sources["uncompressed"]
    (ref,) = write_key_images(src.header, {1: src.frames[0]}, DEMO, tmp_path)
    ds = dcmread(ref.path)
    del ds.Modality  # Type 1 in General Series
    del ds.SamplesPerPixel  # Type 1 in Image Pixel
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    ok, errors, _ = run_dciodvfy(broken)
    assert not ok
    assert any("Modality" in e for e in errors)
    assert any("SamplesPerPixel" in e or "Samples per Pixel" in e for e in errors)


@pytest.mark.integration
def test_unreadable_file_is_an_error(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 200 + b"nonsense")
    ok, errors, _ = run_dciodvfy(junk)
    assert not ok and errors


def test_parse_and_filter():
    out = ("VideoEndoscopicImage\nError - Missing attribute Type 1 Modality\n"
           "Warning - Unrecognized defined term <99AMAGI> for value 1\n"
           "Warning - Something else\n")
    result = parse_dciodvfy(out)
    assert result == (False, ["Missing attribute Type 1 Modality"],
                      ["Unrecognized defined term <99AMAGI> for value 1", "Something else"])
    assert unexpected_warnings(result.warnings, [r"<99AMAGI>"]) == ["Something else"]
    assert parse_dciodvfy("").ok


def test_dsrdump_rejects_non_sr(sources):
    with pytest.raises(ValidatorUnavailableError, match="dsrdump failed"):
        run_dsrdump(sources["h264"].path)


def test_missing_tool_is_a_clear_error(sources, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ValidatorUnavailableError, match="dciodvfy is not on PATH"):
        run_dciodvfy(sources["h264"].path)
    with pytest.raises(ValidatorUnavailableError, match="dsrdump is not on PATH"):
        run_dsrdump(sources["h264"].path)


@pytest.mark.integration
def test_arrays_unchanged_by_validation(sources):
    # validation only reads: the file is byte-identical afterwards
    path = sources["h264"].path
    before = path.read_bytes()
    run_dciodvfy(path)
    assert path.read_bytes() == before
    assert np.frombuffer(before[:132], np.uint8)[128:132].tobytes() == b"DICM"
