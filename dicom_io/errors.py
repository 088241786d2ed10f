"""Exceptions raised by :mod:`dicom_io`; every message is one clear line for the user."""

from __future__ import annotations


class DicomIOError(Exception):
    """Base class of every dicom_io error."""


class InvalidInstanceError(DicomIOError):
    """The file is not a usable DICOM instance (unreadable, missing required attributes)."""


class UnsupportedTransferSyntaxError(DicomIOError):
    """The transfer syntax (or SOP class) is not one the plugin can decode."""


class VideoDecodeError(DicomIOError):
    """The pixel data could not be decoded."""


class TruncatedVideoError(VideoDecodeError):
    """The bit stream ends early or is damaged; frames decoded before the damage are usable."""

    def __init__(self, message: str, frames_decoded: int = 0) -> None:
        super().__init__(message)
        self.frames_decoded = frames_decoded


class MissingTimingError(DicomIOError):
    """No usable frame timing (Frame Time, Frame Time Vector or stream timestamps)."""


class EmptyVideoError(DicomIOError):
    """The instance holds no frames."""


class WriterError(DicomIOError):
    """A result object (SR, SEG, KOS, key image) could not be built or written."""


class NetworkError(DicomIOError):
    """An association could not be made or a DIMSE operation failed."""


class EchoFailedError(DicomIOError):
    """The peer accepted the association but did not answer C-ECHO with Success (PS3.7
    §9.1.5): it does not offer Verification, answered another status, or answered nothing
    in time. The message says which."""


class AssociationRejectedError(NetworkError):
    """The peer answered the association request with A-ASSOCIATE-RJ (PS3.8 §9.3.4): it is
    reachable and refused this association; the message gives the result (permanent or
    transient), source and reason."""
