"""DICOM networking for the plugin: the C-ECHO/C-STORE listener and the C-STORE sender.

* :class:`~dicom_io.net.listener.DicomListener` receives instances into a spool directory
  (PS3.4 Annex B Storage SCP, PS3.7 §9.1.1 C-STORE, PS3.15 Annex B TLS).
* :func:`~dicom_io.net.scu.send_instances` and :func:`~dicom_io.net.scu.echo` send to a peer.
* :func:`~dicom_io.net.stow.store_instances` sends to a DICOMweb server (STOW-RS).
* :mod:`~dicom_io.net.commitment` requests Storage Commitment and reads its reports, on
  the requesting association or on one the SCP opens to the listener.
* :mod:`~dicom_io.net.tls` builds the :class:`ssl.SSLContext` objects for both sides.

Import the submodules directly; this package imports nothing at import time.
"""
