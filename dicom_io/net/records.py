"""What the listener reports to the application: one record per stored instance and one
per finished association. Plain frozen dataclasses, free of PHI (no patient name or ID)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path


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
