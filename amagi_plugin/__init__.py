"""AMAGI workstation plugin: active-bleeding detection in surgical video, inside the PACS.

The service, the analysis pipeline and the ``amagi`` command line live here; DICOM I/O,
networks and the case store are the sibling packages ``dicom_io``, ``models`` and ``db``.
"""

__version__ = "0.1.0"
