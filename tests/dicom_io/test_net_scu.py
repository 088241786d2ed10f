"""send_instances/echo against DCMTK storescp and the project's own listener (loopback)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage
from pynetdicom import AE, evt

from dicom_io.errors import EchoFailedError, NetworkError
from dicom_io.net.contexts import VERIFICATION
from dicom_io.net.scu import MAX_CONTEXTS, SendResult, _batches, _Item, echo, send_instances
from tests.dicom_io._net_fixtures import (
    Recorder,
    dataset_part,
    free_port,
    make_sr,
    make_uncompressed,
    make_video,
    pynetdicom_config,  # noqa: F401
    running_listener,
)

pytestmark = [pytest.mark.usefixtures("pynetdicom_config")]




@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("scu")
    return [
        make_video(d / "h264.dcm", "h264"),
        make_video(d / "h264frag.dcm", "h264", transfer_syntax="1.2.840.10008.1.2.4.102.1"),
        make_video(d / "mpeg2.dcm", "mpeg2"),
        make_video(d / "hevc.dcm", "hevc"),
        make_uncompressed(d / "native.dcm"),
        make_sr(d / "sr.dcm"),
    ]


@pytest.mark.integration
def test_send_to_dcmtk_storescp_is_byte_identical(storescp: tuple[int, Path],
                                                  files: list[Path]) -> None:
    port, out = storescp
    results = send_instances(files, "STORESCP", "127.0.0.1", port)
    assert [r.path for r in results] == files
    # DCMTK 3.6.7 predates the fragmentable H.264 syntax (.102.1): refused per instance,
    # the others still go over the same association
    frag = results[1]
    assert not frag.ok and frag.status is None
    assert "refused" in (frag.error or "") and "1.2.840.10008.1.2.4.102.1" in (frag.error or "")
    sent = [(src, r) for src, r in zip(files, results, strict=True) if r is not frag]
    assert [r.ok for _, r in sent] == [True] * len(sent), [r.error for _, r in sent]
    assert [r.status for _, r in sent] == [0] * len(sent)
    received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
                for p in out.glob("*.dcm")}
    assert len(received) == len(sent)
    for src, res in sent:
        got = received[res.sop_instance_uid or ""]
        assert dataset_part(got) == dataset_part(src)
        assert (dcmread(got, stop_before_pixels=True).file_meta.TransferSyntaxUID
                == dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    echo("STORESCP", "127.0.0.1", port)  # returns: Success


def test_one_association_for_a_batch_with_exact_syntaxes(tmp_path: Path,
                                                         files: list[Path]) -> None:
    rec = Recorder()
    with running_listener(tmp_path / "spool", rec) as listener:
        results = send_instances(files, "AMAGI", "127.0.0.1", listener.port,
                                 calling_ae_title="SENDER")
        [summary] = rec.wait_released(1)
    assert all(r.ok for r in results)
    assert summary.calling_ae == "SENDER" and len(summary.instances) == len(files)
    for src, inst in zip(files, summary.instances, strict=True):
        assert inst.transfer_syntax == dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert dataset_part(inst.path) == dataset_part(src)


def test_unreachable_peer_raises_quickly(tmp_path: Path, files: list[Path]) -> None:
    port = free_port()  # nothing listens here
    start = time.monotonic()
    with pytest.raises(NetworkError, match=rf"no association with AMAGI@127.0.0.1:{port}"):
        send_instances(files[:1], "AMAGI", "127.0.0.1", port, timeout=5)
    with pytest.raises(NetworkError):
        echo("AMAGI", "127.0.0.1", port, timeout=5)
    assert time.monotonic() - start < 3


@contextmanager
def _echo_peer(handler: Callable[[object], int] | None, contexts: list[str]) -> Iterator[int]:
    """A pynetdicom SCP on loopback accepting ``contexts``, answering C-ECHO with
    ``handler`` (pynetdicom's own Success when ``None``); yields its port."""
    ae = AE(ae_title="PEER")
    for uid in contexts:
        ae.add_supported_context(uid)
    handlers = [] if handler is None else [(evt.EVT_C_ECHO, handler)]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def test_echo_says_why_an_accepted_association_gave_no_success() -> None:
    def slow(event: object) -> int:
        time.sleep(2.5)
        return 0x0000

    no_verification = r"accepted the association but not the Verification SOP Class"
    with _echo_peer(None, [CTImageStorage]) as port, \
            pytest.raises(EchoFailedError, match=rf"^PEER@127.0.0.1:{port} {no_verification}"):
        echo("PEER", "127.0.0.1", port, timeout=5)
    with _echo_peer(lambda event: 0x0211, [VERIFICATION]) as port, \
            pytest.raises(EchoFailedError, match=r"answered C-ECHO with status 0x0211"):
        echo("PEER", "127.0.0.1", port, timeout=5)
    with _echo_peer(slow, [VERIFICATION]) as port:
        start = time.monotonic()
        with pytest.raises(EchoFailedError, match=r"sent no C-ECHO response within 1 s"):
            echo("PEER", "127.0.0.1", port, timeout=1)
        assert time.monotonic() - start < 2.5
    with _echo_peer(None, [VERIFICATION]) as port:
        echo("PEER", "127.0.0.1", port, timeout=5)  # the same peer, answering: no error


def test_unreadable_file_is_a_result_not_an_exception(tmp_path: Path, files: list[Path]) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    rec = Recorder()
    with running_listener(tmp_path / "spool", rec) as listener:
        results = send_instances([junk, files[0], tmp_path / "missing.dcm"], "AMAGI",
                                 "127.0.0.1", listener.port)
    assert [r.ok for r in results] == [False, True, False]
    assert results[0].status is None and "File Meta" in (results[0].error or "")
    assert "missing.dcm" in (results[2].error or "")
    assert len(rec.stored) == 1


def test_batches_respect_the_128_context_limit() -> None:
    items = [_Item(i, Path(f"{i}.dcm"), f"1.2.{i % 130}", "1.2.840.10008.1.2.1", f"9.{i}")
             for i in range(300)]
    batches = _batches(items)
    assert [i for b in batches for i in b] == items  # order kept, nothing lost
    for b in batches:
        assert len({(i.sop_class, i.transfer_syntax) for i in b}) <= MAX_CONTEXTS
    assert len(batches) == 3
    assert _batches([]) == []


def test_send_result_ok_only_for_success_or_warning() -> None:
    from dicom_io.net.status import is_success, status_name

    assert is_success(0x0000) and is_success(0xB000) and is_success(0xB007)
    assert not is_success(0xA700) and not is_success(0xC210) and not is_success(0x0110)
    assert status_name(0xA700) == "0xA700 Out of Resources"
    assert SendResult(Path("x"), None, None, False, "e").ok is False
