"""Every coded concept the result writers use, as value/meaning/scheme triples (PS3.16).

Standard codes come from SNOMED CT (``SCT``), DICOM (``DCM``) and UCUM. Concepts with no
standard code use the private coding scheme ``99AMAGI`` (PS3.3 §8.2: designators starting
with ``99`` are private); every SR that uses them declares the scheme with
:func:`private_scheme_item` in its Coding Scheme Identification Sequence (PS3.3 C.12.1.1.5).
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.sr.coding import Code

PRIVATE_SCHEME = "99AMAGI"
#: Fixed UID of the private coding scheme (a ``2.25`` UUID-derived UID, PS3.5 B.2).
PRIVATE_SCHEME_UID = "2.25.191741609155813735924441066311734613925"
PRIVATE_SCHEME_NAME = "AMAGI plugin private codes"
PRIVATE_SCHEME_ORGANIZATION = "AMAGI workstation plugin project"
PRIVATE_SCHEME_VERSION = "1"

# --- findings and segmentation (SCT) ---------------------------------------------------
HEMORRHAGE = Code("50960005", "SCT", "Hemorrhage")
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("49755003", "SCT", "Morphologically Altered Structure")
ENDOSCOPY = Code("423827005", "SCT", "Endoscopy")

# --- measurements and their derivations (SCT, CID 7464) --------------------------------
DURATION = Code("103335007", "SCT", "Duration")
TOTAL = Code("255619001", "SCT", "Total")
MEAN = Code("373098007", "SCT", "Mean")
MAXIMUM = Code("56851009", "SCT", "Maximum")

# --- units (UCUM) ----------------------------------------------------------------------
SECOND = Code("s", "UCUM", "second")
NO_UNITS = Code("1", "UCUM", "no units")
EVENTS_UNIT = Code("{events}", "UCUM", "events")
FRAME_UNIT = Code("{frame}", "UCUM", "frame")

# --- document titles, purposes of reference and algorithm family (DCM, SCT) ------------
IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")
OF_INTEREST = Code("113000", "DCM", "Of Interest")
SOURCE = Code("260753009", "SCT", "Source")
SOURCE_OF_MEASUREMENT = Code("121112", "DCM", "Source of Measurement")
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
#: Purpose of Reference of the algorithm's Contributing Equipment item (CID 7005).
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")

# --- private concepts (99AMAGI) --------------------------------------------------------
EVENT_TIME_RANGE = Code("TRANGE", PRIVATE_SCHEME, "Bleeding event time range")
PEAK_PROBABILITY = Code("PPROB", PRIVATE_SCHEME, "Peak bleeding probability")
MEAN_PROBABILITY = Code("MPROB", PRIVATE_SCHEME, "Mean bleeding probability")
EVENT_COUNT = Code("NEVENT", PRIVATE_SCHEME, "Bleeding event count")
TIME_TO_FIRST_BLEEDING = Code("TFIRST", PRIVATE_SCHEME, "Time to first bleeding")
ANALYSED_DURATION = Code("VIDDUR", PRIVATE_SCHEME, "Analysed video duration")
EVENT_START_FRAME = Code("FSTART", PRIVATE_SCHEME, "Bleeding event first frame")
EVENT_END_FRAME = Code("FEND", PRIVATE_SCHEME, "Bleeding event last frame")


def private_scheme_item() -> Dataset:
    """One Coding Scheme Identification Sequence item declaring ``99AMAGI``.

    Returns
    -------
    pydicom.Dataset
        Item of (0008,0110) Coding Scheme Identification Sequence (PS3.3 C.12.1.1.5).
    """
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeUID = PRIVATE_SCHEME_UID
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeVersion = PRIVATE_SCHEME_VERSION
    item.CodingSchemeResponsibleOrganization = PRIVATE_SCHEME_ORGANIZATION
    return item


def same_code(item: Dataset | None, code: Code) -> bool:
    """Whether a coded-entry item (e.g. a Concept Name Code Sequence item) is ``code``.

    Compares Code Value and Coding Scheme Designator only (PS3.3 §8.8).
    """
    if item is None:
        return False
    value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
    return value == code.value and item.get("CodingSchemeDesignator") == code.scheme_designator
