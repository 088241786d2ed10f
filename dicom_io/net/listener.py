"""The C-ECHO / C-STORE listener (Storage SCP, PS3.4 Annex A and B; TLS per PS3.15 B.1).

:class:`DicomListener` wraps pynetdicom's ``start_server(block=False)``: it negotiates only the
contexts of :mod:`dicom_io.net.contexts`, streams each data set to disk
(:data:`CHUNKED_RECEIVE`, held while it runs), checks and spools it durably and reports it through
callbacks (see :mod:`dicom_io.net.handlers`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from pynetdicom import AE, _config, evt
from pynetdicom.transport import ThreadedAssociationServer

from dicom_io.net import handlers
from dicom_io.net.commitment import STORAGE_COMMITMENT_PUSH_MODEL, CommitmentReport, handle_report
from dicom_io.net.contexts import accepted_contexts
from dicom_io.net.pduguard import PduLimitedAccept
from dicom_io.net.records import AssociationSummary, StoredInstance
from dicom_io.net.spool import SpaceGuard
from dicom_io.net.tls import DeferredHandshake
from dicom_io.process_setting import ProcessSetting

logger = logging.getLogger(__name__)

DEFAULT_MAX_PDU = 262144


def _set_chunked_receive(value: bool) -> None:
    _config.STORE_RECV_CHUNKED_DATASET = value


#: pynetdicom streams received C-STORE data sets to a temporary file while this is ``True``.
#: The flag is process-wide (``pynetdicom._config``); every running :class:`DicomListener`
#: holds it (``True`` only changes *where* data sets are buffered: handlers using
#: ``event.dataset`` still work), and it is back to its earlier value once the last stops.
CHUNKED_RECEIVE = ProcessSetting("pynetdicom STORE_RECV_CHUNKED_DATASET",
                                 lambda: _config.STORE_RECV_CHUNKED_DATASET,
                                 _set_chunked_receive)


class DicomListener:
    """A DICOM listener that spools received instances and reports them.

    Parameters
    ----------
    ae_title : str
        Our AE title (1-16 characters).
    bind_address : str
        Address to listen on (``"127.0.0.1"``, ``"0.0.0.0"``, ``""``).
    port : int
        TCP port; ``0`` picks a free one (see :attr:`port` after :meth:`start`).
    spool_dir : str or Path
        Root of the spool; files go to ``<study>/<series>/<sop>.dcm`` below it.
    on_stored : callable
        ``on_stored(StoredInstance)``, called after the file is fsynced and before the
        response. Success is sent only if it returns; if it raises, the file is removed and
        the status is 0xC001. Called concurrently from association threads.
    on_association_released : callable, optional
        ``on_association_released(AssociationSummary)`` when an association ends (release,
        abort or dropped connection), including associations that stored nothing.
    max_pdu : int
        Maximum PDU size we receive, bytes (0 = unlimited). Default 256 KiB.
    acse_timeout, dimse_timeout, network_timeout : float
        Seconds (PS3.8 ARTIM / DIMSE / idle network timeouts).
    allowed_calling_aes : sequence of str
        Calling AE titles allowed to associate; empty allows any.
    reserve_bytes : int
        Free space (bytes) that must remain on the spool filesystem after each store,
        else status 0xA700.
    tls : ssl.SSLContext, optional
        Server context from :func:`dicom_io.net.tls.server_context`; plaintext
        connections then fail the TLS handshake.
    on_received_phi : callable, optional
        ``on_received_phi(patient_name, patient_id)`` for every received header, so the
        application can redact these values from logs. They are never logged here.
    max_associations : int
        Concurrent associations accepted before new ones are rejected (transient).
    require_called_ae : bool
        Reject associations whose Called AE Title is not ``ae_title`` (PS3.8 7.1.1.9,
        reason 7 "called-AE-title-not-recognized"). On by default.
    incoming_dir : path-like, optional
        Where pynetdicom streams C-STORE data sets being received (the process's
        temporary directory); a data set an aborted association leaves there is removed.
    on_commitment_report : callable, optional
        ``on_commitment_report(CommitmentReport)`` for each Storage Commitment report a
        PACS sends on an association it opens to us (PS3.4 J.3.3: it proposes the Storage
        Commitment Push Model with the SCP role, which is then accepted). The report is
        acknowledged only if this returns; if it raises, the status is 0x0110.

    A PDU announcing more than ``max_pdu`` bytes (P-DATA-TF) or than
    :data:`dicom_io.net.pduguard.MAX_CONTROL_PDU` (any other PDU) closes the connection
    from its header, before its body is read (:mod:`dicom_io.net.pduguard`).
    """

    def __init__(
        self,
        ae_title: str,
        bind_address: str,
        port: int,
        spool_dir: str | Path,
        on_stored: Callable[[StoredInstance], None],
        on_association_released: Callable[[AssociationSummary], None] | None = None,
        max_pdu: int = DEFAULT_MAX_PDU,
        acse_timeout: float = 30.0,
        dimse_timeout: float = 60.0,
        network_timeout: float = 60.0,
        allowed_calling_aes: Sequence[str] = (),
        reserve_bytes: int = 0,
        tls: ssl.SSLContext | None = None,
        on_received_phi: Callable[[str, str], None] | None = None,
        max_associations: int = 32,
        require_called_ae: bool = True,
        incoming_dir: str | Path | None = None,
        on_commitment_report: Callable[[CommitmentReport], None] | None = None,
    ) -> None:
        if not isinstance(ae_title, str) or not 0 < len(ae_title.strip()) <= 16:
            raise ValueError(f"ae_title must be 1-16 characters, got {ae_title!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0-65535, got {port}")
        if max_pdu < 0:
            raise ValueError(f"max_pdu must be >= 0, got {max_pdu}")
        if max_associations < 1:
            raise ValueError(f"max_associations must be >= 1, got {max_associations}")
        if isinstance(allowed_calling_aes, str):
            raise TypeError("allowed_calling_aes must be a sequence of AE titles, not a str")
        if tls is not None and not isinstance(tls, ssl.SSLContext):
            raise TypeError(f"tls must be an ssl.SSLContext or None, got {type(tls).__name__}")
        self.ae_title = ae_title.strip()
        self.bind_address = bind_address
        self._requested_port = port
        self.spool_dir = Path(spool_dir)
        self.max_pdu = max_pdu
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        self.network_timeout = network_timeout
        self.allowed_calling_aes = tuple(a.strip() for a in allowed_calling_aes)
        self.max_associations = max_associations
        self.require_called_ae = bool(require_called_ae)
        self.tls = tls
        self._state = handlers.ListenerState(
            spool_dir=self.spool_dir,
            on_stored=on_stored,
            on_released=on_association_released,
            on_received_phi=on_received_phi,
            space=SpaceGuard(self.spool_dir, reserve_bytes),
            allowed_calling_aes=self.allowed_calling_aes,
            incoming_dir=None if incoming_dir is None else Path(incoming_dir),
        )
        self.on_commitment_report = on_commitment_report
        self._ae: AE | None = None
        self._server: ThreadedAssociationServer | None = None

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = self.max_pdu
        ae.acse_timeout = self.acse_timeout
        ae.dimse_timeout = self.dimse_timeout
        ae.network_timeout = self.network_timeout
        ae.maximum_associations = self.max_associations
        ae.require_calling_aet = list(self.allowed_calling_aes)
        ae.require_called_aet = self.require_called_ae
        for abstract, syntaxes in accepted_contexts():
            ae.add_supported_context(abstract, list(syntaxes))
        if self.on_commitment_report is not None:
            # The peer is the Storage Commitment SCP sending us its N-EVENT-REPORT.
            ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=False,
                                     scp_role=True)
        return ae

    def start(self) -> None:
        """Bind and serve in background threads; returns at once.

        Raises
        ------
        RuntimeError
            If already started.
        OSError
            If the address cannot be bound or the spool directory cannot be created.
        """
        if self._server is not None:
            raise RuntimeError("listener already started")
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        CHUNKED_RECEIVE.claim(self, True)
        try:
            self._serve()
        except BaseException:
            CHUNKED_RECEIVE.release(self)
            raise

    def _serve(self) -> None:
        s = self._state
        evt_handlers = [
            (evt.EVT_ACCEPTED, handlers.handle_accepted, [s]),
            (evt.EVT_REJECTED, handlers.handle_rejected, [s]),
            (evt.EVT_C_ECHO, handlers.handle_echo, [s]),
            (evt.EVT_C_STORE, handlers.handle_store, [s]),
            (evt.EVT_DATA_RECV, handlers.handle_data_recv, [s]),
            (evt.EVT_RELEASED, handlers.handle_released, [s]),
            (evt.EVT_ABORTED, handlers.handle_aborted, [s]),
            (evt.EVT_CONN_CLOSE, handlers.handle_conn_close, [s]),
        ]
        if self.on_commitment_report is not None:
            evt_handlers.append((evt.EVT_N_EVENT_REPORT, handle_report,
                                 [self.on_commitment_report]))
        ae = self._make_ae()
        # pynetdicom only calls wrap_socket() on it (see DeferredHandshake, PduLimitedAccept)
        tls = DeferredHandshake(self.tls, self.network_timeout) if self.tls else None
        accept = PduLimitedAccept(self.max_pdu, tls)
        server = ae.start_server((self.bind_address, self._requested_port), block=False,
                                 evt_handlers=evt_handlers,
                                 ssl_context=accept)  # type: ignore[arg-type]
        if server is None:  # block=False always returns the server
            raise RuntimeError("pynetdicom did not return a server")
        self._ae, self._server = ae, server
        logger.info("listening as AE %r on %s:%d (TLS %s, max PDU %d, reserve %d bytes, "
                    "calling AEs %s, called AE %s, at most %d associations)", self.ae_title,
                    self.bind_address, self.port, "on" if self.tls else "off", self.max_pdu,
                    s.space.reserve_bytes, ", ".join(self.allowed_calling_aes) or "any",
                    "enforced" if self.require_called_ae else "not checked",
                    self.max_associations)

    def stop(self) -> None:
        """Stop accepting, abort associations still open, and wait for the server thread.

        Aborted associations are reported with ``aborted=True``; C-STOREs not yet answered
        were not acknowledged, so their senders will send them again. Safe to call twice.
        """
        ae, server = self._ae, self._server
        if ae is None or server is None:
            return
        self._ae = self._server = None
        try:
            self._shutdown(server)
        finally:
            CHUNKED_RECEIVE.release(self)

    def _shutdown(self, server: ThreadedAssociationServer) -> None:
        server.shutdown()
        for assoc in list(server.active_associations):
            if assoc.is_established:
                assoc.abort()
                assoc.join(timeout=self.network_timeout)
            else:  # still negotiating (or a failed TLS handshake): nothing to report
                assoc.kill()
        logger.info("listener %r on port %d stopped", self.ae_title, server.server_address[1])

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful with ``port=0``)."""
        if self._server is None:
            raise RuntimeError("listener not started")
        return int(self._server.server_address[1])

    def refused_counts(self) -> dict[str, int]:
        """C-STOREs refused since start, by status name."""
        return self._state.refused()

    @property
    def is_running(self) -> bool:
        """``True`` between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    def __enter__(self) -> DicomListener:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
