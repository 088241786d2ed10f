"""Every character set pydicom decodes goes through the SR, SEG, KOS and key images: the
patient's name comes back as it was, in the source's character set or, where highdicom
refuses that value, in UTF-8 (ISO_IR 192)."""

from __future__ import annotations

import warnings

import pydicom.charset
import pytest
from pydicom import dcmread

from dicom_io._writer_common import UTF8, result_character_set
from dicom_io.keyimages import write_key_images
from dicom_io.kos import write_key_object_selection
from dicom_io.seg import write_bleeding_segmentation
from dicom_io.sr import write_bleeding_report
from tests.dicom_io._writers_fixtures import (
    DEMO,
    assert_valid,
    make_events,
    make_index,
    make_masks,
    make_source,
)

#: Candidate ideographic/phonetic/alphabetic names; each charset gets the first it encodes.
_SAMPLES = ("山田^太郎", "홍^길동", "王^小东", "ﾔﾏﾀﾞ^ﾀﾛｳ", "Παπαδόπουλος^Γιώργος", "Иванов^Иван",
            "ابن^علي", "כהן^דוד", "สมชาย^ใจดี", "Müller^Jürgen", "Łukasiewicz^Jan",
            "Şahin^Ayşe", "Tamm^Mäe")


def _values(term: str) -> list[str]:
    """The Specific Character Set for ``term``: code extensions follow an empty value 1."""
    return ["", term] if term.startswith("ISO 2022") and term != "ISO 2022 IR 6" else [term]


def _sample(values: list[str]) -> str:
    """A name with characters outside ASCII that pydicom encodes in ``values`` exactly."""
    encodings = pydicom.charset.convert_encodings(values)
    for text in _SAMPLES:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                encoded = pydicom.charset.encode_string(text, encodings)
            except (UserWarning, UnicodeError, LookupError):
                continue
        if pydicom.charset.decode_bytes(encoded, encodings, set()) == text:
            return text
    return "Roe^Jane"  # nothing outside ASCII round-trips (JIS X 0212 alone)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_source("h264", tmp_path_factory.mktemp("charset_source"))


def _with_charset(header, values: list[str], name: str):
    ds = header.copy()
    ds.SpecificCharacterSet = values if len(values) > 1 else values[0]
    ds.PatientName = name
    return ds


@pytest.mark.parametrize("term", sorted(pydicom.charset.python_encoding))
def test_every_pydicom_character_set_through_every_writer(source, tmp_path, term):
    values = _values(term)
    name = "Doe^John" if term in ("", "ISO_IR 6", "ISO 2022 IR 6") else \
        f"Doe^John={_sample(values)}"
    header = _with_charset(source.header, values, name)
    events = make_events(1)
    frames = {e.key_frame: source.frames[e.key_frame - 1] for e in events}
    images = write_key_images(header, frames, DEMO, tmp_path)
    seg = write_bleeding_segmentation(header, make_masks(events), DEMO, tmp_path)
    kos = write_key_object_selection(header, [e.key_frame for e in events], images, DEMO,
                                     tmp_path)
    sr = write_bleeding_report(header, events, make_index(events), DEMO, tmp_path)
    for ref in (*images, seg, kos, sr):
        ds = dcmread(ref.path)
        assert str(ds.PatientName) == name, (ref.path.name, ds.get("SpecificCharacterSet"))


@pytest.mark.integration
def test_japanese_code_extensions_kept_and_valid(source, tmp_path):
    """The issue's case: ['', 'ISO 2022 IR 87'] with a Japanese ideographic name."""
    header = _with_charset(source.header, ["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎")
    assert result_character_set(header) == ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    events = make_events(1)
    seg = write_bleeding_segmentation(header, make_masks(events), DEMO, tmp_path)
    ds = dcmread(seg.path)
    assert list(ds.SpecificCharacterSet) == ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    assert str(ds.PatientName) == "Yamada^Tarou=山田^太郎"
    assert_valid(seg.path)


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("", None), ("ISO_IR 6", None), ("ISO_IR 100", "ISO_IR 100"),
    (["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 87"]),
    (["", "ISO 2022 IR 149"], UTF8),  # highdicom 0.28 does not know IR 149
    ("ISO 2022 IR 100", UTF8),  # a code extension alone is refused by highdicom
])
def test_result_character_set(source, value, expected):
    ds = source.header.copy()
    if value is None:
        del ds.SpecificCharacterSet
    else:
        ds.SpecificCharacterSet = value
    assert result_character_set(ds) == expected
