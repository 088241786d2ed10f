"""Outbound adapters of ``amagi serve``: how results reach a destination (DICOM C-STORE or
DICOMweb STOW-RS), Storage Commitment requests, and the reports that come back later.

The delivery loop (:mod:`amagi_plugin.service.delivery`) decides what to send and when; this
module only speaks to the destinations, with the credentials and TLS settings of each.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from amagi_plugin.config import Config, Destination
from amagi_plugin.webin import web_auth
from db import Database

log = logging.getLogger(__name__)


class Outbound:
    """Sends results and commitment requests to the configured destinations.

    ``environ``: where DICOMweb destinations' passwords and tokens are read (``os.environ``
    by default), at each send, so a rotated secret is used without a restart.
    """

    def __init__(self, cfg: Config, environ: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self.environ = os.environ if environ is None else environ

    def check_secrets(self) -> None:
        """Refuse to start when a DICOMweb destination's secret variable is not set."""
        for dest in self.cfg.delivery.destinations:
            self.web_auth(dest)

    def web_auth(self, dest: Destination):
        """The credentials of a DICOMweb destination, read from the environment now."""
        return web_auth(dest, self.environ, "destination")

    def send(self, paths: list[Path], dest: Destination):
        """Send ``paths`` to ``dest`` (STOW-RS or C-STORE); returns the per-file results."""
        if dest.is_web:
            from dicom_io.net.stow import store_instances

            return store_instances(paths, dest.url, auth=self.web_auth(dest),
                                   ca_file=dest.tls_ca or None, cert_file=dest.tls_cert or None,
                                   key_file=dest.tls_key or None, timeout=dest.timeout_s)
        from dicom_io.net.scu import send_instances

        return send_instances(paths, dest.ae_title, dest.host, dest.port,
                              calling_ae_title=self.cfg.delivery.calling_ae_title,
                              tls=client_tls(dest))

    def commit(self, refs: list[tuple[str, str]], dest: Destination, transaction_uid: str
               ) -> list[tuple[bool, str]] | None:
        """Ask ``dest`` to commit ``refs`` (SOP class, instance); ``(committed, reason)`` per
        reference, or ``None`` when the report will come on a new association."""
        from dicom_io.net.commitment import request_storage_commitment

        results = request_storage_commitment(
            refs, dest.ae_title, dest.host, dest.port,
            calling_ae_title=self.cfg.delivery.calling_ae_title, tls=client_tls(dest),
            transaction_uid=transaction_uid,
            report_wait=self.cfg.delivery.commitment_report_wait_s)
        if results is None:  # the report comes on a new association: record_commitment_report
            return None
        by_uid = {r.sop_instance_uid: r for r in results}
        out = []
        for _cls, uid in refs:
            r = by_uid.get(uid)
            if r is None or (not r.committed and r.failure_reason is None):
                out.append((False, "not in the commitment report"))
            else:
                out.append((r.committed, "" if r.committed else
                            f"Failure Reason 0x{r.failure_reason:04X}"))
        return out


def client_tls(dest: Destination):
    """The TLS context for an outbound association to ``dest`` (None: plaintext)."""
    if not dest.tls:
        return None
    from dicom_io.net.tls import client_context

    return client_context(ca_file=dest.tls_ca or None, cert_file=dest.tls_cert or None,
                          key_file=dest.tls_key or None)


def record_commitment_report(database: Database, report) -> None:
    """A Storage Commitment report on an association the destination opened: record it for
    the deliveries of its transaction sent to that AE (raises: not acknowledged)."""
    from db.deliveries import record_commitment_report as record

    failed = {uid: f"Failure Reason 0x{code:04X}" for uid, code in report.failed.items()}
    with database.session(write=True) as s:
        n = record(s, report.transaction_uid, set(report.committed), failed,
                   from_ae=report.calling_ae)
    if n == 0:
        log.warning("storage commitment report %s from %s matches no delivery sent to "
                    "that AE; ignored", report.transaction_uid, report.calling_ae)
    else:
        log.info("storage commitment report %s from %s: %d committed, %d failed",
                 report.transaction_uid, report.calling_ae, len(report.committed),
                 len(report.failed))
