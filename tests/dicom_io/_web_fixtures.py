"""A small local HTTP server standing in front of a DICOMweb server, for the STOW-RS tests.

:class:`FlakyDicomweb` answers each POST (STOW-RS) and GET (QIDO-RS) according to its current
:attr:`~FlakyDicomweb.plan` (a list consumed one request at a time; when empty,
:attr:`~FlakyDicomweb.then` applies):

* ``("status", code, content_type, body)``: answer that, storing nothing;
* ``("hang", seconds)``: read the request, say nothing for ``seconds``, close;
* ``("proxy",)``: forward the request to :attr:`upstream` (a real DICOMweb server, e.g.
  Orthanc) and relay its answer;
* ``("accept",)``: a POST: parse the multipart body and answer 200 with a STOW-RS response
  that lists every instance as stored, keeping the instances in :attr:`stored`; a GET: answer
  200 with an empty QIDO-RS result (``[]``).

Every request is logged in :attr:`requests` (method, path, headers) so tests can check what
the client sent (e.g. its Authorization header).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from typing import Any

import pydicom


def _parts(content_type: str, body: bytes) -> list[bytes]:
    boundary = None
    for piece in content_type.split(";"):
        k, _, v = piece.strip().partition("=")
        if k.lower() == "boundary":
            boundary = v.strip('"')
    if boundary is None:
        raise ValueError(f"no boundary in {content_type!r}")
    out = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        _head, _, payload = chunk.partition(b"\r\n\r\n")
        out.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return out


class FlakyDicomweb:
    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self.plan: list[tuple[Any, ...]] = []
        self.then: tuple[Any, ...] = ("proxy",) if upstream else ("accept",)
        self.requests: list[dict[str, Any]] = []
        self.answers: list[int] = []
        self.stored: dict[str, pydicom.Dataset] = {}
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, tls: tuple[str, str] | None = None) -> FlakyDicomweb:
        """Listen on 127.0.0.1; ``tls``: (certificate, key) PEM files to serve https."""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                owner._handle(self)

            def do_GET(self) -> None:
                owner._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    # -- one request ---------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = _read_body(h)
        with self._lock:
            step = self.plan.pop(0) if self.plan else self.then
            self.requests.append({"method": h.command, "path": h.path,
                                  "headers": dict(h.headers.items()), "step": step[0]})
        kind = step[0]
        if kind == "hang":
            time.sleep(step[1])
            h.close_connection = True
            return
        if kind == "status":
            self._answer(h, step[1], step[2], step[3])
        elif kind == "accept" and h.command == "GET":
            self._answer(h, 200, "application/dicom+json", "[]")
        elif kind == "accept":
            self._accept(h, body)
        elif kind == "proxy":
            self._proxy(h, body)
        else:
            raise AssertionError(f"unknown step {step!r}")

    def _answer(self, h: BaseHTTPRequestHandler, code: int, content_type: str,
                body: bytes | str) -> None:
        data = body.encode() if isinstance(body, str) else body
        with self._lock:
            self.answers.append(code)
        try:
            h.send_response(code)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except OSError:  # the client gave up (timeout)
            h.close_connection = True

    def _accept(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        refs = []
        for part in _parts(h.headers["Content-Type"], body):
            ds = pydicom.dcmread(BytesIO(part))
            self.stored[str(ds.SOPInstanceUID)] = ds
            item = pydicom.Dataset()
            item.ReferencedSOPClassUID = ds.SOPClassUID
            item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
            refs.append(item)
        rsp = pydicom.Dataset()
        rsp.ReferencedSOPSequence = refs
        self._answer(h, 200, "application/dicom+json", json.dumps(rsp.to_json_dict()))

    def _proxy(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        assert self.upstream is not None
        path = h.path.split("/dicom-web", 1)[-1]
        headers = {k: v for k, v in h.headers.items()
                   if k.lower() in ("content-type", "authorization", "accept")}
        req = urllib.request.Request(self.upstream + path, data=body or None, method=h.command,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                code, ctype, data = r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as e:
            code, ctype, data = e.code, e.headers.get("Content-Type", ""), e.read()
        self._answer(h, code, ctype or "application/octet-stream", data)


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                h.rfile.readline()
                return bytes(out)
            out += h.rfile.read(size)
            h.rfile.readline()
    return h.rfile.read(int(h.headers.get("Content-Length") or 0))
