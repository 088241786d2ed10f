"""What the listener reports to the application: one record per stored instance and one
per finished association. Plain frozen dataclasses; the one identifying value they carry,
the patient ID, is left out of their ``repr`` (so out of logs); the patient's name is never
carried."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from dicom_io.sopclasses import is_series_frame


@dataclass(frozen=True)
class StoredInstance:
    """An instance durably written to the spool (before the C-STORE response is sent).

    Attributes
    ----------
    path : Path
        ``<spool>/<study>/<series>/<sop instance>.dcm`` (PS3.10 file, fsynced).
    sop_class_uid, sop_instance_uid, study_instance_uid, series_instance_uid : str
        Validated per PS3.5 §9.1; SOP class/instance equal to the C-STORE request's.
    transfer_syntax : str
        The negotiated transfer syntax of the data set.
    size_bytes : int
        Size of the spooled file in bytes (File Meta included).
    calling_ae, called_ae : str
        AE titles of the association (PS3.8 §7.1.1).
    peer_address : str
        IP address of the sender.
    association_id : str
        Identifier of the association within this listener (groups the instances of one push).
    received_at : datetime
        When the file was placed (UTC).
    number_of_frames : int or None
        Number of Frames (0028,0008); ``None`` for single-frame or SR/KOS objects.
    rows, columns : int or None
        Rows (0028,0010) and Columns (0028,0011), pixels.
    modality : str or None
        Modality (0008,0060).
    series_number, instance_number : int or None
        Series Number (0020,0011) and Instance Number (0020,0013).
    images_in_acquisition : int or None
        Images in Acquisition (0020,1002), when the sender gives the expected count.
    study_date : date or None
        Study Date (0008,0020), when it is a valid DA value.
    study_description, series_description : str or None
        Study Description (0008,1030) and Series Description (0008,103E).
    patient_id : str or None
        Patient ID (0010,0020), for an application that stores it; not in the ``repr``.

    The header is read once, by the listener: everything the application records of an
    instance is here, so nothing reads the file again to record it.
    """

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax: str
    size_bytes: int
    calling_ae: str
    called_ae: str
    peer_address: str
    association_id: str
    received_at: dt.datetime
    number_of_frames: int | None = None
    rows: int | None = None
    columns: int | None = None
    modality: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    images_in_acquisition: int | None = None
    study_date: dt.date | None = None
    study_description: str | None = None
    series_description: str | None = None
    patient_id: str | None = field(default=None, repr=False)

    @property
    def is_series_frame(self) -> bool:
        """Whether this instance is one image of a single-frame series (analysed as one video
        per series, see :func:`dicom_io.sopclasses.is_series_frame`)."""
        return is_series_frame(self.sop_class_uid, self.number_of_frames)


@dataclass(frozen=True)
class AssociationSummary:
    """One finished association (released or aborted) as seen by the listener.

    Attributes
    ----------
    association_id : str
        Same value as :attr:`StoredInstance.association_id`.
    calling_ae, called_ae : str
        AE titles.
    peer_address : str
        IP address of the sender.
    instances : tuple of StoredInstance
        Instances answered with Success in this association, in arrival order.
    failed : int
        Number of C-STORE requests answered with a failure status.
    aborted : bool
        ``True`` when the association ended by A-ABORT or a dropped connection rather than
        an orderly A-RELEASE.
    """

    association_id: str
    calling_ae: str
    called_ae: str
    peer_address: str
    instances: tuple[StoredInstance, ...]
    failed: int
    aborted: bool
