"""Event handlers of the Storage SCP, bound with ``(event, handler, [state])``.

Every handler is a plain function taking the pynetdicom event and the listener's
:class:`ListenerState`; none raises out of pynetdicom's event loop: each C-STORE failure
becomes a named status from :mod:`dicom_io.net.status` plus one log line (PS3.4 B.2.3).
Patient name and ID are never logged; they go to the ``on_received_phi`` callback only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.charset import convert_encodings, decode_bytes

from dicom_io.fragments import read_header
from dicom_io.net import status as st
from dicom_io.net.checks import check_structure, check_uid
from dicom_io.net.records import AssociationSummary, StoredInstance
from dicom_io.net.spool import SpaceGuard, needs_copy, place

logger = logging.getLogger(__name__)

#: Values of a received header larger than this (bytes) stay on disk: a C-STORE never
#: loads a large attribute into memory to read the few it needs.
HEADER_DEFER_SIZE = 4096


@dataclass
class _AssociationState:
    association_id: str
    calling_ae: str
    called_ae: str
    peer_address: str
    instances: list[StoredInstance] = field(default_factory=list)
    failed: int = 0
    received: int = 0  # bytes of PDU data received
    checked_at: int = 0  # ``received`` when free space was last checked
    discarded: str | None = None  # why the data set being received goes to no file


class _Discard:
    """Stands in for the temporary file of a data set being received that will not be kept:
    the data that still arrives is dropped, the partial file is closed (by the thread that
    writes, on its next call) and removed at once. pynetdicom only calls ``write``,
    ``file.flush``, ``close`` and reads ``name``."""

    def __init__(self, partial: Any) -> None:
        self._partial = partial
        self.name = partial.name
        self.file = self
        Path(partial.name).unlink(missing_ok=True)

    def _close_partial(self) -> None:
        partial, self._partial = self._partial, None
        if partial is not None:
            # already closed, or mid-write in the other thread at an abort
            with contextlib.suppress(Exception):
                partial.close()

    def write(self, data: bytes) -> int:
        self._close_partial()
        return len(data)

    def flush(self) -> None:
        self._close_partial()

    def close(self) -> None:
        self._close_partial()


def _discard_partial(assoc: Any) -> int:
    """Drop the data set ``assoc`` is receiving (its partial file is removed); returns the
    bytes removed (0 when none was being received)."""
    msg = getattr(getattr(assoc, "dimse", None), "message", None)
    partial = getattr(msg, "_data_set_file", None)
    if partial is None or isinstance(partial, _Discard):
        return 0
    try:
        size = os.path.getsize(partial.name)
    except OSError:
        size = 0
    msg._data_set_file = _Discard(partial)
    return size


@dataclass
class ListenerState:
    """Everything the handlers of one listener share; owned by that listener.

    Attributes
    ----------
    spool_dir : Path
        Root of the spool.
    on_stored : callable
        Called with each :class:`StoredInstance` after fsync; raising makes the store fail.
    on_released : callable or None
        Called with an :class:`AssociationSummary` when an association ends.
    on_received_phi : callable or None
        Called with ``(patient_name, patient_id)`` of every received header.
    space : SpaceGuard
        Free-space accounting of the spool filesystem.
    allowed_calling_aes : tuple of str
        Allow-list (for the rejection log line); empty means any AE.
    incoming_dir : Path or None
        Where pynetdicom writes data sets being received (for log lines only).
    check_every : int
        Bytes received on an association between two free-space checks.
    """

    spool_dir: Path
    on_stored: Callable[[StoredInstance], None]
    on_released: Callable[[AssociationSummary], None] | None
    on_received_phi: Callable[[str, str], None] | None
    space: SpaceGuard
    allowed_calling_aes: tuple[str, ...] = ()
    incoming_dir: Path | None = None
    check_every: int = 1 << 20
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _associations: dict[int, _AssociationState] = field(default_factory=dict)
    _refused: dict[int, int] = field(default_factory=dict)

    def count_refused(self, status: int) -> None:
        """Count a C-STORE answered with failure ``status``."""
        with self._lock:
            self._refused[status] = self._refused.get(status, 0) + 1

    def refused(self) -> dict[str, int]:
        """C-STOREs refused since start, by status name (``"0xA700 Out of Resources"``)."""
        with self._lock:
            return {st.status_name(k): v for k, v in sorted(self._refused.items())}

    def association(self, assoc: Any) -> _AssociationState:
        """The state of ``assoc``, created on first use."""
        with self._lock:
            state = self._associations.get(id(assoc))
            if state is None:
                state = _AssociationState(
                    association_id=uuid.uuid4().hex[:16],
                    calling_ae=str(assoc.requestor.ae_title).strip(),
                    called_ae=str(assoc.acceptor.ae_title).strip(),
                    peer_address=str(assoc.requestor.address),
                )
                self._associations[id(assoc)] = state
            return state

    def has_association(self, assoc: Any) -> bool:
        """``True`` while ``assoc`` is tracked (accepted and not yet reported)."""
        with self._lock:
            return id(assoc) in self._associations

    def pop_association(self, assoc: Any) -> _AssociationState | None:
        """Remove and return the state of ``assoc`` (``None`` if already finished)."""
        with self._lock:
            return self._associations.pop(id(assoc), None)


class _Refused(Exception):
    """A C-STORE failure with its status; the message is the log reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def handle_accepted(event: Any, state: ListenerState) -> None:
    """EVT_ACCEPTED: start tracking the association and log it."""
    a = state.association(event.assoc)
    logger.info("association %s accepted from AE %r at %s", a.association_id, a.calling_ae,
                a.peer_address)


def handle_rejected(event: Any, state: ListenerState) -> None:
    """EVT_REJECTED: one clear log line naming the calling and called AE and the reason."""
    assoc = event.assoc
    calling = str(assoc.requestor.ae_title).strip()
    address = assoc.requestor.address
    primitive = getattr(assoc.requestor, "primitive", None)
    called = str(getattr(primitive, "called_ae_title", "") or "").strip()
    ours = str(assoc.acceptor.ae_title).strip()
    if state.allowed_calling_aes and calling not in state.allowed_calling_aes:
        reason = "calling AE title is not on the allow-list"
    elif getattr(assoc.ae, "require_called_aet", False) and called != ours:
        reason = f"called AE title {called!r} is not ours ({ours!r})"
    else:
        reason = "too many associations at once"
    logger.warning("association from AE %r at %s to %r rejected: %s", calling, address,
                   called, reason)


def handle_echo(event: Any, state: ListenerState) -> int:
    """EVT_C_ECHO: Verification SOP Class (PS3.4 Annex A) always succeeds."""
    return st.SUCCESS


def handle_data_recv(event: Any, state: ListenerState) -> None:
    """EVT_DATA_RECV: check free space while a data set arrives (every ``check_every``
    bytes). Below the reserve the rest of the data set is dropped, its partial file removed,
    and the C-STORE is answered 0xA700 once the request is complete.

    pynetdicom triggers this in the thread that then decodes the PDU and writes the data
    set (its state machine), so swapping the file here races with no write."""
    try:
        if not state.has_association(event.assoc):
            return  # negotiation PDUs
        a = state.association(event.assoc)
        a.received += len(event.data)
        if a.discarded:  # a data set whose file appeared after the check is dropped too
            _discard_partial(event.assoc)
            return
        if a.received - a.checked_at < state.check_every:
            return
        a.checked_at = a.received
        ok, why = state.space.has_room()
        if ok:
            return
        removed = _discard_partial(event.assoc)
        a.discarded = f"free space fell below the reserve while receiving: {why}"
        logger.warning("association %s from AE %r: %s; the data set being received is "
                       "dropped (%d partial bytes removed) and will be refused with 0xA700",
                       a.association_id, a.calling_ae, a.discarded, removed)
    except Exception:
        logger.exception("free-space check while receiving failed")


def _finish(event: Any, state: ListenerState, aborted: bool) -> None:
    if aborted:
        try:
            removed = _discard_partial(event.assoc)
        except Exception:
            logger.exception("cannot remove the partial upload of an aborted association")
            removed = 0
        if removed:
            logger.warning("aborted association left a partial data set of %d bytes; removed",
                           removed)
    a = state.pop_association(event.assoc)
    if a is None:
        return
    summary = AssociationSummary(a.association_id, a.calling_ae, a.called_ae, a.peer_address,
                                 tuple(a.instances), a.failed, aborted)
    logger.info("association %s from AE %r %s: %d stored, %d failed", a.association_id,
                a.calling_ae, "aborted" if aborted else "released", len(a.instances), a.failed)
    if state.on_released is None:
        return
    try:
        state.on_released(summary)
    except Exception:
        logger.exception("on_association_released failed for association %s",
                         a.association_id)


def handle_released(event: Any, state: ListenerState) -> None:
    """EVT_RELEASED: report the association's instances (``aborted=False``)."""
    _finish(event, state, aborted=False)


def handle_aborted(event: Any, state: ListenerState) -> None:
    """EVT_ABORTED: report what was stored (``aborted=True``)."""
    _finish(event, state, aborted=True)


def handle_conn_close(event: Any, state: ListenerState, settle_s: float = 1.0) -> None:
    """EVT_CONN_CLOSE: report an association that ended without EVT_RELEASED/EVT_ABORTED.

    The connection of an orderly release may close (in the DUL thread) a moment before the
    association thread marks itself released, so wait up to ``settle_s`` seconds for
    that; the release or abort handler then reports it. Otherwise (the DUL stopped
    silently) report it here as aborted. Each association is reported exactly once.
    """
    assoc = event.assoc
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        if assoc.is_released or assoc.is_aborted or not state.has_association(assoc):
            return
        time.sleep(0.01)
    _finish(event, state, aborted=True)


def header_fields(header: Dataset) -> dict[str, Any]:
    """The fields of a :class:`~dicom_io.net.records.StoredInstance` that come from the
    instance's header (however the instance arrived: C-STORE here, or a DICOMweb retrieval)."""
    return dict(
        number_of_frames=_optional_int(header, "NumberOfFrames"),
        rows=_optional_int(header, "Rows"),
        columns=_optional_int(header, "Columns"),
        modality=str(header.get("Modality", "") or "") or None,
        series_number=_optional_int(header, "SeriesNumber"),
        instance_number=_optional_int(header, "InstanceNumber"),
        images_in_acquisition=_optional_int(header, "ImagesInAcquisition"),
        study_date=_optional_date(_raw_text(header, "StudyDate")),
        study_description=_raw_text(header, "StudyDescription") or None,
        series_description=_raw_text(header, "SeriesDescription") or None,
        patient_id=_raw_text(header, "PatientID") or None,
    )


def _optional_int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _optional_date(value: str) -> dt.date | None:
    """A DA value (``YYYYMMDD``) as a date; ``None`` when empty or not a valid date."""
    try:
        return dt.datetime.strptime(value.strip(), "%Y%m%d").date()
    except ValueError:
        return None


def _header_uids(header: Dataset, sop_class: str, sop_instance: str) -> tuple[str, str]:
    """Check the header against the request; return (study, series) UIDs."""
    values: dict[str, str] = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = header.get(keyword)
        if value is None or str(value).strip() == "":
            raise _Refused(st.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is missing")
        values[keyword] = str(value).strip()
        ok, why = check_uid(values[keyword], keyword)
        if not ok:
            raise _Refused(st.INVALID_UID, why)
    if values["SOPClassUID"] != sop_class:
        raise _Refused(st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                       f"SOPClassUID {values['SOPClassUID']} differs from the request's {sop_class}")
    if values["SOPInstanceUID"] != sop_instance:
        raise _Refused(st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                       "SOPInstanceUID in the data set differs from the request's")
    return values["StudyInstanceUID"], values["SeriesInstanceUID"]


def _raw_text(header: Dataset, keyword: str) -> str:
    """A text attribute decoded from its raw bytes, without pydicom's value validation.

    Validation would log an invalid value (possibly a patient name) before the application
    could register it for redaction.
    """
    try:
        raw = header.get_item(keyword)
        if raw is None or raw.value is None:
            return ""
        value = raw.value
        if isinstance(value, bytes):
            charset = header.get_item("SpecificCharacterSet")
            names = charset.value if charset is not None and charset.value else b"ISO_IR 6"
            if isinstance(names, bytes):
                names = [n.strip() for n in names.decode("ascii", "replace").split("\\")]
            value = decode_bytes(value, convert_encodings(names), set())
        return str(value).rstrip(" \0")
    except Exception:
        return ""


def _report_phi(header: Dataset, state: ListenerState) -> None:
    """Hand patient name and ID to the application before anything else touches them."""
    if state.on_received_phi is None:
        return
    try:
        state.on_received_phi(_raw_text(header, "PatientName"), _raw_text(header, "PatientID"))
    except Exception as e:  # the values are never logged
        logger.error("on_received_phi failed (%s); continuing", type(e).__name__)


def _store(event: Any, state: ListenerState, a: _AssociationState) -> StoredInstance:
    if a.discarded:
        why, a.discarded = a.discarded, None
        a.checked_at = a.received - state.check_every  # check again on the next data
        raise _Refused(st.OUT_OF_RESOURCES, why)
    req = event.request
    sop_class = str(req.AffectedSOPClassUID)
    sop_instance = str(req.AffectedSOPInstanceUID)
    transfer_syntax = str(event.context.transfer_syntax)
    ok, why = check_uid(sop_instance, "AffectedSOPInstanceUID")
    if not ok:
        raise _Refused(st.INVALID_UID, why)
    src = Path(event.dataset_path)
    size = src.stat().st_size
    ok, why = check_structure(src, transfer_syntax)
    if not ok:
        raise _Refused(st.CANNOT_UNDERSTAND, why)
    try:
        header = read_header(src, defer_size=HEADER_DEFER_SIZE).dataset
    except Exception as e:  # the pydicom error that made it unreadable names the reason
        reason = type(e.__cause__ or e).__name__
        raise _Refused(st.CANNOT_UNDERSTAND, f"unreadable header: {reason}") from e
    _report_phi(header, state)
    study, series = _header_uids(header, sop_class, sop_instance)

    needed = size if needs_copy(src, state.spool_dir) else 0
    ok, why = state.space.try_reserve(needed)
    if not ok:
        raise _Refused(st.OUT_OF_RESOURCES, why)
    try:
        placed = place(src, state.spool_dir, (study, series), f"{sop_instance}.dcm")
    except OSError as e:
        code = st.OUT_OF_RESOURCES if e.errno in (errno.ENOSPC, errno.EDQUOT) else \
            st.SPOOL_WRITE_FAILED
        raise _Refused(code, f"writing to the spool failed: {e.strerror or e}") from e
    finally:
        state.space.release(needed)

    instance = StoredInstance(
        path=placed.path,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=study,
        series_instance_uid=series,
        transfer_syntax=transfer_syntax,
        size_bytes=placed.path.stat().st_size,
        calling_ae=a.calling_ae,
        called_ae=a.called_ae,
        peer_address=a.peer_address,
        association_id=a.association_id,
        received_at=dt.datetime.now(dt.timezone.utc),
        **header_fields(header),
    )
    try:
        state.on_stored(instance)
    except Exception as e:
        placed.rollback()
        logger.exception("on_stored failed for SOP instance %s; file removed", sop_instance)
        raise _Refused(st.RECORD_FAILED, f"recording failed: {type(e).__name__}") from e
    placed.commit()
    return instance


def handle_store(event: Any, state: ListenerState) -> int:
    """EVT_C_STORE: validate, spool durably, record, then answer (PS3.4 B.2.3).

    Order: UID syntax of the request → element structure of the received file (catches
    garbage and truncation) → header (read before Pixel Data) → header UIDs against the
    request → free space against the reserve → atomic placement with fsync →
    ``on_stored`` → Success. Any failure before Success leaves nothing in the spool.

    Returns
    -------
    int
        A status from :mod:`dicom_io.net.status`.
    """
    a = state.association(event.assoc)
    try:
        instance = _store(event, state, a)
    except _Refused as e:
        a.failed += 1
        state.count_refused(e.status)
        logger.warning("C-STORE from AE %r (association %s) failed: %s: %s", a.calling_ae,
                       a.association_id, st.status_name(e.status), e)
        return e.status
    except Exception:
        a.failed += 1
        state.count_refused(st.PROCESSING_FAILURE)
        logger.exception("C-STORE from AE %r (association %s) failed unexpectedly",
                         a.calling_ae, a.association_id)
        return st.PROCESSING_FAILURE
    a.instances.append(instance)
    logger.info("stored SOP instance %s (%d bytes, %s) from AE %r", instance.sop_instance_uid,
                instance.size_bytes, instance.transfer_syntax, a.calling_ae)
    return st.SUCCESS
