"""Reading video instances from a DICOMweb server: QIDO-RS to find them (PS3.18 §10.6),
WADO-RS to retrieve them (PS3.18 §10.4), through ``dicomweb-client``.

:func:`find_video_instances` asks ``{base_url}/instances`` (or
``{base_url}/studies/{uid}/instances``) once per video SOP class, page by page, and keeps only
what the answer says is a video (a server that ignores a filter is not believed).
:func:`retrieve_instance` writes one instance, as the server stores it (``transfer-syntax=*``),
to a hidden ``.partial`` file next to its destination, fsyncs it and renames it into place:
the destination is either the complete instance or absent.

Errors are those of :mod:`dicom_io.net.web`: unreachable server, timeout, TLS failure,
HTTP 5xx/408/429 → :class:`~dicom_io.errors.NetworkError` (try again later); other HTTP 4xx →
:class:`~dicom_io.net.web.WebRefusedError` with the server's reason.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom

from dicom_io.errors import InvalidInstanceError, NetworkError
from dicom_io.net.checks import check_uid
from dicom_io.net.spool import fsync_directory
from dicom_io.net.web import WebAuth, client, raise_for, session
from dicom_io.sopclasses import VIDEO_SOP_CLASSES

logger = logging.getLogger(__name__)

#: Attributes asked of QIDO-RS for each instance, besides the UIDs it returns anyway.
QIDO_FIELDS = ("StudyDate", "NumberOfFrames", "Modality")
#: Instances asked per QIDO-RS page.
PAGE_SIZE = 500


@dataclass(frozen=True)
class WebInstance:
    """One instance as listed by QIDO-RS."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    study_date: str = ""
    number_of_frames: int | None = None


@dataclass
class WebSource:
    """A DICOMweb server to read from: its service root and how to reach it."""

    base_url: str
    auth: WebAuth | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    timeout: float = 60.0

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")

    def connect(self):
        """``(requests session, DICOMweb client)`` for this server; the caller closes the
        session."""
        http = session(self.auth, self.ca_file, self.cert_file, self.key_file)
        return http, client(self.base_url, http, self.timeout)


def _value(doc: dict, keyword: str) -> str:
    tag = pydicom.datadict.tag_for_keyword(keyword)
    item = doc.get(f"{tag:08X}") or {}
    values = item.get("Value") or []
    return str(values[0]) if values else ""


def _parse(doc: dict) -> WebInstance | None:
    uids = {k: _value(doc, k) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                         "SOPInstanceUID", "SOPClassUID")}
    for name, uid in uids.items():
        ok, why = check_uid(uid, name)
        if not ok:
            logger.warning("QIDO-RS answer skipped: %s", why)
            return None
    frames = _value(doc, "NumberOfFrames")
    return WebInstance(uids["StudyInstanceUID"], uids["SeriesInstanceUID"],
                       uids["SOPInstanceUID"], uids["SOPClassUID"],
                       study_date=_value(doc, "StudyDate"),
                       number_of_frames=int(frames) if frames.isdigit() else None)


def _search(web, source: WebSource, study: str | None, series: str | None,
            filters: dict[str, str]) -> list[dict]:
    """All pages of one QIDO-RS query (``limit``/``offset``). Stops at a short or empty page,
    or at a page that brings nothing new (a server that ignores ``offset``)."""
    import requests

    docs: list[dict] = []
    seen: set[str] = set()
    offset = 0
    while True:
        try:
            page = web.search_for_instances(
                study_instance_uid=study, series_instance_uid=series, search_filters=filters,
                fields=list(QIDO_FIELDS), limit=PAGE_SIZE, offset=offset or None)
        except (requests.RequestException, ValueError) as e:
            raise_for(e, "QIDO-RS", source.base_url, source.timeout)
        page = page or []
        new = [d for d in page if _value(d, "SOPInstanceUID") not in seen]
        seen.update(_value(d, "SOPInstanceUID") for d in new)
        docs += new
        if len(page) < PAGE_SIZE or not new:
            return docs
        offset += len(page)


def find_video_instances(source: WebSource, study_instance_uid: str | None = None,
                         series_instance_uid: str | None = None,
                         study_date_from: str | None = None,
                         sop_classes: Iterable[str] = VIDEO_SOP_CLASSES) -> list[WebInstance]:
    """QIDO-RS: the video instances (Video Endoscopic, Microscopic, Photographic) of a study,
    of a series, or of the whole archive.

    Parameters
    ----------
    source : WebSource
        The server.
    study_instance_uid, series_instance_uid : str, optional
        Restrict the search to that study (and series).
    study_date_from : str, optional
        ``YYYYMMDD``: only studies of that date or later (QIDO-RS range matching).
    sop_classes : iterable of str
        SOP Class UIDs to look for (one query each).

    Returns
    -------
    list of WebInstance
        Each instance once, ordered by study, series and SOP Instance UID.

    Raises
    ------
    NetworkError
        The server cannot be reached, timed out or answered a transient error.
    WebRefusedError
        The server refused the query (HTTP 4xx), e.g. bad credentials.
    """

    for name, uid in (("StudyInstanceUID", study_instance_uid),
                      ("SeriesInstanceUID", series_instance_uid)):
        if uid is not None and not check_uid(uid, name)[0]:
            raise ValueError(check_uid(uid, name)[1])
    if series_instance_uid and not study_instance_uid:
        raise ValueError("a series is searched within its study: give study_instance_uid")
    wanted = sorted(set(sop_classes))
    found: dict[str, WebInstance] = {}
    http, web = source.connect()
    try:
        for sop_class in wanted:
            filters: dict[str, str] = {"SOPClassUID": sop_class}
            if study_date_from:
                filters["StudyDate"] = f"{study_date_from}-"
            docs = _search(web, source, study_instance_uid, series_instance_uid, filters)
            for doc in docs:
                inst = _parse(doc)
                if inst is None or inst.sop_class_uid not in wanted:
                    continue  # a server that does not apply the SOPClassUID filter
                if study_instance_uid and inst.study_instance_uid != study_instance_uid:
                    continue
                found[inst.sop_instance_uid] = inst
    finally:
        http.close()
    out = sorted(found.values(), key=lambda i: (i.study_instance_uid, i.series_instance_uid,
                                                 i.sop_instance_uid))
    logger.info("QIDO-RS at %s: %d video instance(s)%s", source.base_url, len(out),
                f" in study {study_instance_uid}" if study_instance_uid else "")
    return out


def retrieve_instance(source: WebSource, inst: WebInstance, dest: str | os.PathLike[str]) -> Path:
    """WADO-RS: retrieve one instance, as stored on the server, into ``dest`` atomically.

    Returns
    -------
    Path
        ``dest``, a complete PS3.10 file (fsynced, renamed into place).

    Raises
    ------
    NetworkError
        Transient failure (unreachable, timeout, 5xx...): nothing written.
    WebRefusedError
        The server refused (HTTP 4xx, e.g. the instance is gone): nothing written.
    InvalidInstanceError
        The answer is not the instance asked for: nothing written.
    """
    import requests

    dest = Path(dest)
    http, web = source.connect()
    try:
        try:
            ds = web.retrieve_instance(inst.study_instance_uid, inst.series_instance_uid,
                                       inst.sop_instance_uid,
                                       media_types=(("application/dicom", "*"),))
        except (requests.RequestException, ValueError) as e:
            raise_for(e, "WADO-RS", source.base_url, source.timeout)
        except (OSError, EOFError) as e:  # a body cut short while being parsed
            raise NetworkError(f"WADO-RS from {source.base_url}: incomplete answer for "
                               f"{inst.sop_instance_uid}: {e}") from None
    finally:
        http.close()
    got = str(ds.get("SOPInstanceUID", ""))
    if got != inst.sop_instance_uid:
        raise InvalidInstanceError(f"WADO-RS from {source.base_url} answered instance {got!r} "
                                   f"for {inst.sop_instance_uid}")
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise InvalidInstanceError(f"WADO-RS from {source.base_url}: instance "
                                   f"{inst.sop_instance_uid} came without its transfer syntax")
    partial = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.partial"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as fh:
            ds.save_as(fh, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, dest)
        fsync_directory(dest.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    logger.info("WADO-RS: instance %s retrieved from %s (%d bytes)", inst.sop_instance_uid,
                source.base_url, dest.stat().st_size)
    return dest
