"""A small DICOM client (SCU) for `dicomd echo` and `dicomd send`: C-ECHO, and C-STORE of Part 10 files.

Files are sent as they are stored on disk: pynetdicom reads the data set from the file without decoding it
(``STORE_SEND_CHUNKED_DATASET``), each in its own transfer syntax, over as few associations as the
128-presentation-context limit allows."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

if TYPE_CHECKING:
    from pynetdicom.events import Event

MAX_CONTEXTS = 128  # presentation contexts per association (PS3.8 9.3.2.2: odd ids 1-255)
DEFAULT_CALLING_AE = "DICOMD_SCU"


class ClientError(Exception):
    """The peer could not be reached or refused the association (the message says which)."""


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    calling_ae: str = DEFAULT_CALLING_AE
    called_ae: str = "DICOMD"
    timeout: float = 30.0


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:104`` for IPv6) as (host, port); ValueError when it is not one."""
    host, colon, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def set_no_delay(sock: socket.socket) -> None:
    """Small PDUs (C-STORE requests and responses) go out at once: with Nagle's algorithm on, each waits
    for the peer's delayed ACK (a C-STORE ran about 5x slower)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def tune_requested_socket(event: Event) -> None:
    """EVT_CONN_OPEN handler of an association this side requests: TCP_NODELAY on its socket, and the
    network timeout on its reads and writes as on an accepted association's (pynetdicom leaves a requested
    one without: a C-MOVE destination that stopped reading held the move's thread for good)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            set_no_delay(sock)
            sock.settimeout(event.assoc.network_timeout)


def _ae(peer: Peer) -> AE:
    from dicomd.dimse import reactor

    reactor.install()  # pynetdicom's loops wait for work, not 1 ms at a time (dimse/reactor.py)
    ae = AE(ae_title=peer.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = peer.timeout
    return ae


def _associate(peer: Peer, ae: AE, **kwargs: object) -> Association:
    handlers: list[Any] = [(evt.EVT_CONN_OPEN, tune_requested_socket)]
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.called_ae,
        evt_handlers=handlers,
        **kwargs,  # type: ignore[arg-type]
    )
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        raise ClientError(f"{peer.called_ae} at {peer.host}:{peer.port} rejected the association")
    raise ClientError(f"no association with {peer.host}:{peer.port} (unreachable, or it aborted)")


def echo(peer: Peer) -> int:
    """The C-ECHO status (0x0000: success); ClientError when there is no association or no answer."""
    ae = _ae(peer)
    ae.add_requested_context(Verification)
    assoc = _associate(peer, ae)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if "Status" not in status:
        raise ClientError("no C-ECHO response")
    return int(status.Status)


@dataclass(frozen=True)
class SendResult:
    path: Path
    status: int | None  # None: not sent (the comment says why)
    comment: str = ""

    @property
    def stored(self) -> bool:
        """Success, or a warning (stored all the same)."""
        return self.status is not None and (self.status == 0x0000 or (self.status & 0xF000) == 0xB000)


def dicom_files(paths: Iterable[Path]) -> Iterator[Path]:
    """The files among ``paths``, directories walked recursively, in name order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def _contexts_of(paths: Iterable[Path]) -> Iterator[tuple[Path, tuple[str, str] | None]]:
    for path in paths:
        try:
            meta = read_file_meta_info(path)
            yield path, (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        except Exception:
            yield path, None


def send(peer: Peer, paths: Iterable[Path]) -> Iterator[SendResult]:
    """C-STORE each Part 10 file, yielding each file's result as it is known."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    batch: list[tuple[Path, tuple[str, str]]] = []
    pairs: set[tuple[str, str]] = set()
    for path, pair in _contexts_of(paths):
        if pair is None:
            yield SendResult(path, None, "not a DICOM Part 10 file with a File Meta Information")
            continue
        if pair not in pairs and len(pairs) == MAX_CONTEXTS:
            yield from _send_batch(peer, batch, pairs)
            batch, pairs = [], set()
        batch.append((path, pair))
        pairs.add(pair)
    if batch:
        yield from _send_batch(peer, batch, pairs)


def _send_batch(
    peer: Peer, batch: list[tuple[Path, tuple[str, str]]], pairs: set[tuple[str, str]]
) -> Iterator[SendResult]:
    ae = _ae(peer)
    contexts = [build_context(sop_class, syntax) for sop_class, syntax in sorted(pairs)]
    assoc = _associate(peer, ae, contexts=contexts)
    try:
        for path, _pair in batch:
            if not assoc.is_established:
                yield SendResult(path, None, "not sent: the association ended")
                continue
            try:
                status = assoc.send_c_store(path)
            except (ValueError, AttributeError, OSError) as exc:
                yield SendResult(path, None, f"not sent: {exc}")
                continue
            if "Status" not in status:
                yield SendResult(path, None, "no response (the association ended)")
                continue
            comment = str(status.get("ErrorComment", "") or "")
            yield SendResult(path, int(status.Status), comment)
    finally:
        with contextlib.suppress(Exception):
            assoc.release()
