"""Named DIMSE status codes returned by the Storage SCP (PS3.4 Annex B.2.3, PS3.7 Annex C).

Every failure the C-STORE handler can report has its own constant so that the log line and
the status the peer sees name the same cause.
"""

from __future__ import annotations

#: Success (PS3.7 C.1.1).
SUCCESS = 0x0000
#: Refused, Out of Resources: the spool filesystem would fall under the free-space reserve.
OUT_OF_RESOURCES = 0xA700
#: Refused, Out of Resources: the instance could not be written to the spool (I/O error).
SPOOL_WRITE_FAILED = 0xA701
#: Error, Data Set does not match SOP Class: header UIDs missing or differing from the request.
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
#: Error, Cannot understand: the record callback failed; the file was removed again.
RECORD_FAILED = 0xC001
#: Error, Cannot understand: unreadable, garbage or truncated data set.
CANNOT_UNDERSTAND = 0xC210
#: Error, Cannot understand: a UID is not valid per PS3.5 §9.1.
INVALID_UID = 0xC211
#: Processing failure (PS3.7 C.4.2): an unexpected error inside the handler.
PROCESSING_FAILURE = 0x0110

#: Human-readable names, used in log lines.
STATUS_NAMES: dict[int, str] = {
    SUCCESS: "Success",
    OUT_OF_RESOURCES: "Out of Resources",
    SPOOL_WRITE_FAILED: "Out of Resources (spool write failed)",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "Data Set does not match SOP Class",
    RECORD_FAILED: "Cannot understand (recording failed)",
    CANNOT_UNDERSTAND: "Cannot understand",
    INVALID_UID: "Cannot understand (invalid UID)",
    PROCESSING_FAILURE: "Processing failure",
}


def is_success(status: int) -> bool:
    """``True`` for Success and the Warning statuses (0xB000-0xBFFF: stored, with a remark)."""
    return status == SUCCESS or 0xB000 <= status <= 0xBFFF


def status_name(status: int) -> str:
    """The name of ``status`` (``"0xC210 Cannot understand"``), for log lines and errors."""
    return f"0x{status:04X} {STATUS_NAMES.get(status, 'Unknown status')}"
