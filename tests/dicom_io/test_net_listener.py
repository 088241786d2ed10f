"""DicomListener against real peers on loopback: DCMTK storescu/echoscu and pynetdicom."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, generate_uid
from pynetdicom import AE

from dicom_io.errors import AssociationRejectedError
from dicom_io.net import status
from dicom_io.net.scu import echo, send_instances
from dicom_io.sopclasses import COMPREHENSIVE_SR, VIDEO_ENDOSCOPIC
from dicom_io.tools import dcmtk_program
from tests.dicom_io._net_fixtures import (
    PATIENT_ID,
    PATIENT_NAME,
    Recorder,
    dataset_part,
    make_ct,
    make_sr,
    make_uncompressed,
    make_video,
    pynetdicom_config,  # noqa: F401
    replace_dataset,
    run,
    running_listener,
    spool_files,
)

pytestmark = [pytest.mark.usefixtures("pynetdicom_config")]


def _storescu(port: int, *args: str | Path) -> None:
    r = run([dcmtk_program("storescu"), "-aec", "AMAGI", *map(str, args[:-1]), "127.0.0.1", str(port),
             str(args[-1])])
    assert r.returncode == 0, r.stderr


def _check_stored(rec: Recorder, src: Path, ts: str, calling: str) -> None:
    src_ds = dcmread(src, stop_before_pixels=True)
    [inst] = [i for i in rec.stored if i.sop_instance_uid == src_ds.SOPInstanceUID]
    assert inst.path.name == f"{src_ds.SOPInstanceUID}.dcm"
    assert inst.path.parent.name == src_ds.SeriesInstanceUID
    assert inst.path.parent.parent.name == src_ds.StudyInstanceUID
    assert dataset_part(inst.path) == dataset_part(src)  # byte-identical data set
    assert inst.sop_class_uid == src_ds.SOPClassUID
    assert inst.study_instance_uid == src_ds.StudyInstanceUID
    assert inst.series_instance_uid == src_ds.SeriesInstanceUID
    assert inst.transfer_syntax == ts
    assert inst.size_bytes == inst.path.stat().st_size
    assert inst.calling_ae == calling and inst.called_ae == "AMAGI"
    assert inst.peer_address == "127.0.0.1"
    nf = src_ds.get("NumberOfFrames")
    assert inst.number_of_frames == (int(nf) if nf is not None else None)
    # what the application records comes with the instance (nobody reads the file again)
    assert inst.study_date == dt.datetime.strptime(src_ds.StudyDate, "%Y%m%d").date()
    assert inst.study_description == (src_ds.get("StudyDescription") or None)
    assert inst.series_description == (src_ds.get("SeriesDescription") or None)
    assert inst.patient_id == PATIENT_ID and PATIENT_ID not in repr(inst)


@pytest.mark.integration
@pytest.mark.parametrize(("codec", "flag", "ts"), [
    ("h264", "-xn", "1.2.840.10008.1.2.4.102"),
    ("mpeg2", "-xm", "1.2.840.10008.1.2.4.100"),
    ("hevc", "-x4", "1.2.840.10008.1.2.4.107"),
])
def test_dcmtk_storescu_pushes_video(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                     codec: str, flag: str, ts: str) -> None:
    caplog.set_level(logging.DEBUG)
    video = make_video(tmp_path / f"{codec}.dcm", codec)
    rec = Recorder()
    with running_listener(tmp_path / "spool", rec) as listener:
        _storescu(listener.port, flag, "-R", video)
        [summary] = rec.wait_released(1)
    _check_stored(rec, video, ts, "STORESCU")
    assert rec.stored[0].number_of_frames == 8
    assert summary.instances == tuple(rec.stored) and not summary.aborted
    assert summary.calling_ae == "STORESCU" and summary.failed == 0
    assert rec.phi == [(PATIENT_NAME, PATIENT_ID)]
    assert PATIENT_NAME.split("^")[0] not in caplog.text and PATIENT_ID not in caplog.text
    assert [p.name for p in spool_files(tmp_path / "spool")] == [rec.stored[0].path.name]


@pytest.mark.integration
def test_dcmtk_storescu_uncompressed_and_sr_in_one_association(tmp_path: Path) -> None:
    native = make_uncompressed(tmp_path / "native.dcm")
    sr = make_sr(tmp_path / "sr.dcm")
    rec = Recorder()
    with running_listener(tmp_path / "spool", rec) as listener:
        r = run([dcmtk_program("storescu"), "-R", "-aec", "AMAGI", "127.0.0.1", str(listener.port),
                 str(native), str(sr)])
        assert r.returncode == 0, r.stderr
        [summary] = rec.wait_released(1)
    _check_stored(rec, native, "1.2.840.10008.1.2.1", "STORESCU")
    _check_stored(rec, sr, "1.2.840.10008.1.2.1", "STORESCU")
    assert len(summary.instances) == 2
    assert {i.sop_class_uid for i in summary.instances} == {VIDEO_ENDOSCOPIC, COMPREHENSIVE_SR}
    assert [i.modality for i in summary.instances if i.sop_class_uid == COMPREHENSIVE_SR] == ["SR"]


@pytest.mark.integration
def test_echoscu_and_echo(tmp_path: Path) -> None:
    rec = Recorder()
    with running_listener(tmp_path / "spool", rec) as listener:
        r = run([dcmtk_program("echoscu"), "-aec", "AMAGI", "127.0.0.1", str(listener.port)])
        assert r.returncode == 0, r.stderr
        echo("AMAGI", "127.0.0.1", listener.port)  # returns: Success
        summaries = rec.wait_released(2)
    assert all(s.instances == () and not s.aborted for s in summaries)


@pytest.mark.integration
def test_unknown_sop_class_and_syntax_refused_in_negotiation(tmp_path: Path) -> None:
    ct = make_ct(tmp_path / "ct.dcm")
    rec = Recorder()
    with running_listener(tmp_path / "spool", rec) as listener:
        r = run([dcmtk_program("storescu"), "-R", "-aec", "AMAGI", "127.0.0.1", str(listener.port), str(ct)])
        assert r.returncode != 0
        assert "no presentation context" in r.stderr.lower() or "no acceptable" in r.stderr.lower()
        [res] = send_instances([ct], "AMAGI", "127.0.0.1", listener.port)
        assert not res.ok and res.status is None and "refused SOP class" in (res.error or "")
        # a known SOP class proposed only with a syntax we do not list is refused as well
        ae = AE("PROBE")
        ae.add_requested_context(VIDEO_ENDOSCOPIC, JPEG2000Lossless)
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="AMAGI")
        try:
            assert assoc.is_established
            assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [VIDEO_ENDOSCOPIC]
            assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == ["1.2.840.10008.1.1"]
        finally:
            assoc.release()
    assert rec.stored == [] and spool_files(tmp_path / "spool") == []


@pytest.mark.integration
def test_calling_ae_allow_list(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dicom_io")
    video = make_video(tmp_path / "v.dcm")
    rec = Recorder()
    with running_listener(tmp_path / "spool", rec, allowed_calling_aes=["PACS"]) as listener:
        r = run([dcmtk_program("echoscu"), "-aet", "INTRUDER", "-aec", "AMAGI", "127.0.0.1",
                 str(listener.port)])
        assert r.returncode != 0
        with pytest.raises(AssociationRejectedError, match="rejected the association"):
            send_instances([video], "AMAGI", "127.0.0.1", listener.port,
                           calling_ae_title="OTHER")
        [ok] = send_instances([video], "AMAGI", "127.0.0.1", listener.port,
                              calling_ae_title="PACS")
        assert ok.ok
    assert "'INTRUDER'" in caplog.text and "not on the allow-list" in caplog.text
    assert [i.calling_ae for i in rec.stored] == ["PACS"]


def test_out_of_resources_when_reserve_exceeds_free_space(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.dcm")
    rec = Recorder()
    with running_listener(tmp_path / "spool", rec, reserve_bytes=10**18) as listener:
        [res] = send_instances([video], "AMAGI", "127.0.0.1", listener.port)
        [summary] = rec.wait_released(1)
    assert res.status == status.OUT_OF_RESOURCES == 0xA700 and not res.ok
    assert rec.stored == [] and summary.failed == 1
    assert spool_files(tmp_path / "spool") == []


def _variant(src: Path, dst: Path, **changes: object) -> Path:
    ds = dcmread(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UID on purpose
        for keyword, value in changes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(dst)
    return dst


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_malformed_instances_get_failure_status_and_listener_keeps_serving(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dicom_io")
    good = make_video(tmp_path / "good.dcm")
    body = dataset_part(good)
    bad = {
        "garbage": replace_dataset(good, tmp_path / "garbage.dcm", bytes(range(256)) * 8),
        "truncated": replace_dataset(good, tmp_path / "trunc.dcm", body[:-200]),
        "empty": replace_dataset(good, tmp_path / "empty.dcm", b""),
        "no study": _variant(good, tmp_path / "nostudy.dcm", StudyInstanceUID=None),
        "other instance": _variant(good, tmp_path / "other.dcm", SOPInstanceUID=generate_uid()),
        "bad uid": _variant(good, tmp_path / "baduid.dcm", SeriesInstanceUID="1.2.03.x"),
    }
    expected = {
        "garbage": status.CANNOT_UNDERSTAND, "truncated": status.CANNOT_UNDERSTAND,
        "empty": status.CANNOT_UNDERSTAND, "no study": status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        "other instance": status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "bad uid": status.INVALID_UID,
    }
    rec = Recorder()
    with running_listener(tmp_path / "spool", rec) as listener:
        results = send_instances(list(bad.values()), "AMAGI", "127.0.0.1", listener.port)
        assert {name: r.status for name, r in zip(bad, results, strict=True)} == expected
        assert not any(r.ok for r in results)
        # the same association kept working and a new one works too
        [res] = send_instances([good], "AMAGI", "127.0.0.1", listener.port)
        assert res.ok and res.status == status.SUCCESS
        first, second = rec.wait_released(2)
    assert first.failed == len(bad) and first.instances == ()
    assert [i.sop_instance_uid for i in second.instances] == [res.sop_instance_uid]
    assert [p.name for p in spool_files(tmp_path / "spool")] == [f"{res.sop_instance_uid}.dcm"]
    assert "truncated" in caplog.text and "0xA900" in caplog.text


def test_on_stored_raising_gives_failure_and_removes_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    video = make_video(tmp_path / "v.dcm")
    rec = Recorder(fail_stored=True)
    with running_listener(tmp_path / "spool", rec) as listener:
        [res] = send_instances([video], "AMAGI", "127.0.0.1", listener.port)
        assert res.status == status.RECORD_FAILED and not res.ok
        assert spool_files(tmp_path / "spool") == []
        # a re-push after the database recovered succeeds, and a failed re-push of an
        # instance already stored keeps the stored file
        rec.fail_stored = False
        [res] = send_instances([video], "AMAGI", "127.0.0.1", listener.port)
        assert res.ok
        rec.fail_stored = True
        [res] = send_instances([video], "AMAGI", "127.0.0.1", listener.port)
        assert res.status == status.RECORD_FAILED
    [kept] = spool_files(tmp_path / "spool")
    assert dataset_part(kept) == dataset_part(video)
    assert "on_stored failed" in caplog.text


def test_twenty_concurrent_associations_all_stored(tmp_path: Path) -> None:
    videos = [make_video(tmp_path / f"v{i}.dcm", seed=i) for i in range(20)]
    rec = Recorder()
    results: dict[int, list] = {}

    def push(i: int) -> None:
        results[i] = send_instances([videos[i]], "AMAGI", "127.0.0.1", port,
                                    calling_ae_title=f"SCU{i}")

    with running_listener(tmp_path / "spool", rec) as listener:
        port = listener.port
        threads = [threading.Thread(target=push, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        summaries = rec.wait_released(20)
    assert sorted(results) == list(range(20))
    assert all(r[0].ok for r in results.values())
    assert len(rec.stored) == 20 and len(spool_files(tmp_path / "spool")) == 20
    assert sorted(len(s.instances) for s in summaries) == [1] * 20
    for v in videos:
        [inst] = [i for i in rec.stored if i.path.name == f"{dcmread(v).SOPInstanceUID}.dcm"]
        assert dataset_part(inst.path) == dataset_part(v)


def test_stop_aborts_open_association_and_reports_it(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.dcm")
    rec = Recorder()
    with running_listener(tmp_path / "spool", rec) as listener:
        ae = AE("HOLDER")
        ae.add_requested_context(VIDEO_ENDOSCOPIC, "1.2.840.10008.1.2.4.102")
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="AMAGI")
        assert assoc.is_established
        assert assoc.send_c_store(dcmread(video)).Status == 0
    [summary] = rec.wait_released(1)
    assert summary.aborted and summary.calling_ae == "HOLDER" and len(summary.instances) == 1
    deadline = time.monotonic() + 5
    while assoc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted


def test_listener_argument_validation(tmp_path: Path) -> None:
    from dicom_io.net.listener import DicomListener

    with pytest.raises(ValueError, match="ae_title"):
        DicomListener("", "127.0.0.1", 0, tmp_path, print)
    with pytest.raises(ValueError, match="port"):
        DicomListener("AMAGI", "127.0.0.1", 70000, tmp_path, print)
    with pytest.raises(TypeError, match="allowed_calling_aes"):
        DicomListener("AMAGI", "127.0.0.1", 0, tmp_path, print, allowed_calling_aes="PACS")
    listener = DicomListener("AMAGI", "127.0.0.1", 0, tmp_path, print)
    with pytest.raises(RuntimeError, match="not started"):
        _ = listener.port
    listener.stop()  # stopping a listener never started is a no-op


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"])
def test_implicit_vr_and_deflated_instances(tmp_path: Path, ts: str) -> None:
    """Implicit VR (image) and Deflated Explicit VR (SR) data sets are walked and stored."""
    src = make_uncompressed(tmp_path / "native.dcm") if ts == "1.2.840.10008.1.2" \
        else make_sr(tmp_path / "sr.dcm")
    ds = dcmread(src)
    ds.file_meta.TransferSyntaxUID = ts
    converted = tmp_path / "converted.dcm"
    ds.save_as(converted, implicit_vr=ts == "1.2.840.10008.1.2", little_endian=True)
    rec = Recorder()
    with running_listener(tmp_path / "spool", rec) as listener:
        [res] = send_instances([converted], "AMAGI", "127.0.0.1", listener.port)
    assert res.ok, res.error
    [inst] = rec.stored
    assert inst.transfer_syntax == ts
    assert dataset_part(inst.path) == dataset_part(converted)
    assert dcmread(inst.path).SOPInstanceUID == ds.SOPInstanceUID


def test_dropped_connection_is_reported_as_aborted_with_its_instances(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.dcm")
    rec = Recorder()
    with running_listener(tmp_path / "spool", rec) as listener:
        ae = AE("DROPPER")
        ae.add_requested_context(VIDEO_ENDOSCOPIC, "1.2.840.10008.1.2.4.102")
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="AMAGI")
        assert assoc.send_c_store(dcmread(video)).Status == 0
        assoc.dul.socket.socket.close()  # TCP gone: no A-RELEASE, no A-ABORT
        [summary] = rec.wait_released(1)
        assoc.kill()
    assert summary.aborted and summary.calling_ae == "DROPPER"
    assert [i.sop_instance_uid for i in summary.instances] == [rec.stored[0].sop_instance_uid]


def test_pynetdicom_chunked_flags_are_held_only_while_needed(tmp_path: Path,
                                                             monkeypatch) -> None:
    """pynetdicom's process-wide chunked-transfer flags: set while a listener runs or a send
    is under way, back to what they were once the last of them ends."""
    from pynetdicom import _config

    from dicom_io.net import scu

    _config.STORE_RECV_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET = False
    seen: list[bool] = []
    send_one = scu._send_one
    monkeypatch.setattr(scu, "_send_one", lambda assoc, item: (
        seen.append(_config.STORE_SEND_CHUNKED_DATASET), send_one(assoc, item))[1])
    video = make_video(tmp_path / "v.dcm")
    with running_listener(tmp_path / "a", Recorder()) as first:
        assert _config.STORE_RECV_CHUNKED_DATASET is True
        with running_listener(tmp_path / "b", Recorder()):
            pass
        assert _config.STORE_RECV_CHUNKED_DATASET is True  # the first still runs
        [ok] = send_instances([video], "AMAGI", "127.0.0.1", first.port)
        assert ok.ok and seen == [True]
        assert _config.STORE_SEND_CHUNKED_DATASET is False
    assert _config.STORE_RECV_CHUNKED_DATASET is False
