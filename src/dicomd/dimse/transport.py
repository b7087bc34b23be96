"""The listener's association server: pynetdicom's threaded server on the supervisor's listening socket,
hardened for untrusted peers.

- Every connection gets TCP_NODELAY (small C-STORE responses would otherwise wait for Nagle's delayed
  ACK: pynetdicom's C-STORE ran about 5x slower) and a socket timeout of ``dicom_timeout``, so a peer that
  stops reading cannot hold a sending thread forever, nor one that sends half a PDU.
- TLS handshakes run in the connection's own thread with that timeout (pynetdicom would run them in the
  accepting thread, where one silent peer stops every other).
- A PDU is read with as few socket reads as its bytes arrive in (pynetdicom reads 4 KiB at a time), into a
  buffer that grows as they come.
- Received PDUs are bounded: a P-DATA-TF PDU by the maximum length the listener announced
  (``dicom_max_pdu``), any other PDU by ``MAX_OTHER_PDU``, and the data set of one DIMSE message by
  ``max_request_bytes`` (pynetdicom holds it in memory until the message is complete). A peer that sends
  more is disconnected.
- Connections beyond twice ``dicom_max_associations`` are closed at once; up to there, the ones beyond the
  limit get a proper rejection (transient, local limit exceeded). Both limits count the associations of
  every listener process (association_count.py).
- Each connection's thread waits for its association to end and then writes its audit event.
- C-STORE and C-FIND requests take the direct path (dimse/direct.py) when the listener gives one.
- An association's copy of the presentation contexts is made without re-validating their UIDs
  (``SupportedContexts``): a modality that opens an association per instance pays ~1 ms, not ~50 ms.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import socket
import socketserver
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from pynetdicom import evt
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicomd.audit.dimse import AssociationRecord, DimseAudit
from dicomd.dimse.association_count import AssociationCount
from dicomd.dimse.client import set_no_delay
from dicomd.dimse.reactor import EventDrivenDUL, PDataInterceptor

if TYPE_CHECKING:
    from pynetdicom.ae import ApplicationEntity
    from pynetdicom.presentation import PresentationContext

    from dicomd.http.tls import CertificateFiles

log = logging.getLogger("dicomd.dimse")

PDU_HEADER = 6  # type, reserved, 4-byte length
P_DATA_TF = 0x04
# A-ASSOCIATE-RQ (128 presentation contexts of a few syntaxes each, user identity) and the small PDUs
MAX_OTHER_PDU = 1 << 20
_PDV_LENGTH = struct.Struct(">L")


class PduTooLarge(OSError):
    """A peer sent more than the listener accepts: its connection is closed."""


@dataclass(frozen=True)
class Limits:
    timeout: float  # seconds a peer may stay silent, or not read, mid-PDU
    max_pdu: int  # the P-DATA-TF length announced
    max_message: int  # bytes of one DIMSE message's data set
    max_connections: int


def recv_exactly(sock: socket.socket | None, nr_bytes: int) -> bytearray:
    """``nr_bytes`` from the socket, fewer only when the peer closed the connection first (what
    pynetdicom's ``AssociationSocket.recv`` returns). pynetdicom reads 4 KiB per call: a 39 KB instance
    in ten calls, each giving up and taking back the interpreter lock that the connection's threads and
    the other associations' contend for. This reads into the PDU's buffer as much as has arrived: one
    call when it is all there. Socket errors and timeouts propagate, as there."""
    assert sock is not None
    # the buffer grows as bytes arrive (doubling): a header announcing a large PDU, then silence, holds
    # no more than the first allocation
    data = bytearray(min(nr_bytes, _FIRST_ALLOCATION))
    got = 0
    while got < nr_bytes:
        if got == len(data):
            data.extend(bytes(min(len(data), nr_bytes - len(data))))
        with memoryview(data) as view:
            read = sock.recv_into(view[got:], len(data) - got)
        if not read:
            del data[got:]
            break
        got += read
    return data


_FIRST_ALLOCATION = 256 << 10  # the default dicom_max_pdu: a whole P-DATA PDU of most peers at once


class LimitedAssociationSocket(AssociationSocket):
    """pynetdicom's association socket, refusing PDUs and messages beyond the limits.

    pynetdicom's DUL reads a PDU's 6-byte header, then its body with one call each; this checks the
    length the header announces before a byte of the body is read, and adds up the data set fragments
    of the current message as its P-DATA PDUs arrive. Each call reads with ``recv_exactly``."""

    limits: Limits
    _next_is_header = True
    _pdu_type = 0
    _message_bytes = 0

    def recv(self, nr_bytes: int) -> bytearray:
        if self._next_is_header:
            data = recv_exactly(self.socket, nr_bytes)
            if nr_bytes == PDU_HEADER and len(data) == PDU_HEADER:
                self._pdu_type = data[0]
                self._next_is_header = False
                length = _PDV_LENGTH.unpack_from(data, 2)[0]
                limit = self.limits.max_pdu + PDU_HEADER if self._pdu_type == P_DATA_TF else MAX_OTHER_PDU
                if length > limit:
                    self._refuse(f"a PDU of type {self._pdu_type:#04x}, {length} bytes (limit {limit})")
            return data
        self._next_is_header = True
        data = recv_exactly(self.socket, nr_bytes)
        if self._pdu_type == P_DATA_TF:
            self._count_data_set(data)
        return data

    def _refuse(self, what: str) -> NoReturn:
        """Log and raise: pynetdicom's DUL takes the error for a closed connection and closes it."""
        log.warning("DICOM connection from %s closed: it sent %s", self.assoc.requestor.address, what)
        raise PduTooLarge(what)

    def _count_data_set(self, pdu: bytearray) -> None:
        """Adds up the data set fragments of the current message (PS3.8 9.3.5.1, E.2)."""
        position = 0
        while position + 6 <= len(pdu):
            item_length = _PDV_LENGTH.unpack_from(pdu, position)[0]
            control = pdu[position + 5]
            if not control & 0x01:  # a data set fragment (not a command)
                self._message_bytes += max(item_length - 2, 0)
                if self._message_bytes > self.limits.max_message:
                    self._refuse(f"a data set of more than {self.limits.max_message} bytes")
                if control & 0x02:  # the last one of this message
                    self._message_bytes = 0
            position += 4 + item_length


class GatewayRequestHandler(RequestHandler):
    """Runs one connection: its association in pynetdicom's thread, then the association's audit event."""

    server: GatewayServer

    def handle(self) -> None:
        server = self.server
        assoc = self._create_association()
        association_socket = assoc.dul.socket
        # pynetdicom makes the socket itself (and queues its connection event then): give it the limits
        association_socket.__class__ = LimitedAssociationSocket
        association_socket.limits = server.limits  # type: ignore[union-attr]
        address, port = str(self.client_address[0]), int(self.client_address[1])
        record = AssociationRecord(address=address, port=port, tls=isinstance(self.request, ssl.SSLSocket))
        server.audit.attach(assoc, record)
        if server.direct_path is not None and isinstance(assoc.dul, EventDrivenDUL):
            assoc.dul.interceptor = server.direct_path(assoc, record)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        server.associations.opened()
        try:
            assoc.start()
            assoc.join()
        finally:
            server.associations.closed()
        server.audit.association_ended(record, aborted=assoc.is_aborted)


class SupportedContexts(list[Any]):
    """The listener's presentation contexts, as pynetdicom copies them for each association: it deep-copies
    the list, re-validating every UID of some 170 storage contexts x 25 transfer syntaxes (~50 ms per
    association, most of an association's cost). UIDs are immutable: a context's copy needs only its own
    transfer syntax list."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        copies = []
        for context in self:
            duplicate = copy.copy(context)
            duplicate._transfer_syntax = list(context._transfer_syntax)
            copies.append(duplicate)
        return copies


class GatewayServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server on an inherited listening socket (see module docstring)."""

    daemon_threads = True  # a stuck peer's thread must not hold up the shutdown (its socket times out)

    def __init__(
        self,
        ae: ApplicationEntity,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[PresentationContext],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[Any] | None = None,
        *,
        listener: socket.socket,
        limits: Limits,
        tls: CertificateFiles | None,
        audit: DimseAudit,
        associations: AssociationCount,
        direct_path: Callable[[Any, AssociationRecord], PDataInterceptor] | None = None,
    ) -> None:
        self._listener = listener
        self.limits = limits
        self.associations = associations  # of all listener processes
        self.tls = tls
        self.audit = audit
        self.direct_path = direct_path  # each association's direct path (direct.py)
        super().__init__(
            ae,
            address,
            ae_title,
            SupportedContexts(contexts),
            None,
            evt_handlers,
            request_handler=GatewayRequestHandler,
        )

    def server_bind(self) -> None:
        """Serve on the supervisor's socket (bound and listening already) instead of binding one."""
        if self.socket is not None:
            self.socket.close()
        self._listener.setblocking(False)  # accept() never waits: a client gone before it is no stall
        self.socket = self._listener
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass  # listening already

    def server_close(self) -> None:
        # close this process's descriptor only: a shutdown() would stop the supervisor's socket listening,
        # and the listener that replaces this one serves on it
        self._listener.close()

    def shutdown(self) -> None:
        """Stop serving and close the listening descriptor (pynetdicom's would also unregister the server
        from the AE's list of those it started itself, which this one is not on)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()

    def service_actions(self) -> None:
        """Nothing: pynetdicom's runs a full gc.collect() every 60 connections (~60 ms holding the GIL in
        the listener, a stall for every association in progress); Python's own collector frees what the
        ended associations leave in reference cycles."""

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = self._listener.accept()
        try:
            set_no_delay(conn)
            conn.settimeout(self.limits.timeout)
            if self.tls is not None:
                # the handshake runs in the connection's thread (process_request_thread)
                conn = self.tls.context().wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        except OSError:
            conn.close()
            raise
        return conn, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.associations.total() >= self.limits.max_connections:
            log.warning("DICOM connection from %s closed: too many connections", client_address[0])
            return False
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (OSError, ValueError) as exc:
                log.info("DICOM TLS handshake with %s failed (%s)", client_address[0], type(exc).__name__)
                self.shutdown_request(request)
                return
        try:
            self.finish_request(request, client_address)
        except Exception:
            log.exception("a DICOM connection from %s failed", client_address[0])
        finally:
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("a DICOM connection from %s failed", client_address[0])

    def shutdown_request(self, request: Any) -> None:
        with contextlib.suppress(OSError):
            super().shutdown_request(request)
