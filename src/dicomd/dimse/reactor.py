"""Waits that end when there is work, in place of pynetdicom's fixed 1 ms sleeps.

pynetdicom (3.0) runs two polling loops per association: its DUL thread (PDUs in and out) sleeps 1 ms
after every pass that found nothing to do, and the association thread sleeps 1 ms before each look at its
queue of received DIMSE messages. A request and its response cross those sleeps three times, so each
operation waited ~1.5 ms on average for nothing (more on a busy machine): a third of a C-FIND's latency.

``install()``, called once in the listener process, keeps pynetdicom's loops and their logic, and changes
only what their sleeps wait for:

- the DUL thread waits on its socket and on a wake-up socket pair that ``send_pdu`` and ``kill_dul`` write
  to, so a received PDU or a primitive to send is handled at once; with nothing to do it wakes every 10 ms
  (the ARTIM timer and events queued by other threads, which do not wake it, are seen by then);
- the association thread's 1 ms sleep becomes a wait on its DIMSE message queue's condition, which a
  complete message ends, and so do a ``send_*`` call that pauses the reactor (it clears the reactor's
  checkpoint and spins until the reactor has paused: a C-MOVE's every C-STORE did that), a primitive the
  DUL hands up (the peer's release request or abort) and a kill. Nothing else ends its loop but the
  network timeout, so it wakes every 50 ms with nothing to do instead of every 1 ms: four idle
  associations' polling cost the C-STORE path of a four-association ``storescu`` ~0.2 ms of CPU (and GIL)
  per instance.

It is done by standing in for the ``time`` module in pynetdicom's ``dul`` and ``association`` modules (a
sleep there is routed by the calling thread; other sleeps stay sleeps) and by having pynetdicom build an
``EventDrivenAssociation`` (with an ``EventDrivenDUL``) wherever it built an ``Association``. Tied to
pynetdicom's internals, like ``retrieve.reactor_resumed``: the version is pinned, and tests/dimse exercise
every path through it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

import pynetdicom.ae as _ae
import pynetdicom.association as _association
import pynetdicom.dul as _dul

if TYPE_CHECKING:
    from pynetdicom.ae import ApplicationEntity
    from pynetdicom.association import Association

log = logging.getLogger("dicomd.dimse")

_POLL = 0.001  # pynetdicom's sleep in both loops
_IDLE_WAIT = 0.01  # the DUL thread's longest wait with nothing to do
_REACTOR_WAIT = 0.05  # the association thread's: only the network timeout is seen by polling
PDU_HEADER = struct.Struct(">BBL")  # PDU type, reserved, length (PS3.8 9.3)
P_DATA_TF = 0x04
_KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))
_ABORT_SEND_TIMEOUT = 1.0  # seconds the A-ABORT to a silent peer may take to go
# an A-ABORT from the service user, reason not specified (PS3.8 9.3.8): what pynetdicom's abort() sends
_A_ABORT_PDU = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"


class PDataInterceptor(Protocol):
    """Takes the P-DATA-TF PDUs it can answer itself (dimse/direct.py) before pynetdicom decodes
    them; runs in the DUL thread."""

    # while installed, the network (idle) timer stands still: it awaits a response whose wait the DIMSE
    # timeout bounds, as pynetdicom's reactor, paused during a send_*, does not look at that timer
    holds_idle_timer: bool

    def take(self, dul: EventDrivenDUL, pdu: bytearray) -> bool:
        """Whether the PDU (header included) was taken; if not, pynetdicom handles it as usual."""
        ...


class EventDrivenDUL(_dul.DULServiceProvider):
    """pynetdicom's DUL provider, woken by its socket or by a primitive to send instead of a timer, and
    with an optional ``interceptor`` of received P-DATA-TF PDUs."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self.interceptor: PDataInterceptor | None = None
        self.to_user_queue = _WakingQueue(assoc)
        # writes of the direct paths (dimse/direct*.py) and pynetdicom's own go out whole, one at a time: a
        # C-MOVE sub-operation is written by the association's thread while this one may send an abort
        self.write_lock = threading.RLock()
        self.write_failed = False  # a write failed or timed out: the connection is shut, nothing more goes
        # this thread answers a request itself (dimse/direct.py): the peer waits, silent, as long as the
        # answer takes (a move to a slow destination), so the idle timer stands still (the association
        # thread, which watches it, would end the association); and a sleep in pynetdicom's code it calls
        # then (another association's send or release) is a real one, not this reactor's idle wait
        self.answering = False

    def _read_pdu_data(self) -> None:
        """pynetdicom's, with the interceptor offered each P-DATA-TF PDU first (the same reads, so the
        listener's limits on PDU sizes apply alike; the same events on a short or unknown PDU)."""
        interceptor = self.interceptor
        if interceptor is None:
            return super()._read_pdu_data()  # type: ignore[no-any-return]
        pdu = self.read_pdu()
        if pdu is None or (pdu[0] == P_DATA_TF and interceptor.take(self, pdu)):
            return None
        self.hand_over(pdu)
        return None

    def read_pdu(self) -> bytearray | None:
        """The next whole PDU from the socket (header included); None when there is none to read (the
        connection closed, the peer was silent for the socket's timeout and is aborted, or an unknown PDU
        type: its event is queued for the state machine)."""
        association_socket = self.socket
        assert association_socket is not None
        try:
            pdu = bytearray(association_socket.recv(PDU_HEADER.size))
            if len(pdu) != PDU_HEADER.size:
                self.event_queue.put("Evt17")  # closed before a whole header came
                return None
            pdu_type, _, length = PDU_HEADER.unpack(pdu)
            if pdu_type not in _KNOWN_PDU_TYPES:
                self.event_queue.put("Evt19")  # unrecognised PDU
                return None
            pdu += association_socket.recv(length)
        except TimeoutError:
            # silent for the network timeout (a direct path waits for the requestor's C-STORE response,
            # or a PDU was cut short): aborted, as pynetdicom's own network timeout does, then closed
            self._abort_silent_peer(association_socket)
            self.event_queue.put("Evt17")
            return None
        except OSError:
            self.event_queue.put("Evt17")
            return None
        if len(pdu) != PDU_HEADER.size + length:
            self.event_queue.put("Evt17")
            return None
        return pdu

    def _abort_silent_peer(self, association_socket: Any) -> None:
        """Send an A-ABORT, waiting at most ``_ABORT_SEND_TIMEOUT`` for it to go (a peer that stopped
        reading too would otherwise hold this thread for another network timeout): the connection is
        closed next anyway."""
        raw = association_socket.socket
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.settimeout(min(_ABORT_SEND_TIMEOUT, raw.gettimeout() or _ABORT_SEND_TIMEOUT))
        self.write(_A_ABORT_PDU)

    def hand_over(self, pdu: bytearray) -> None:
        """A PDU read here for pynetdicom: decoded, its event queued for the state machine."""
        try:
            decoded, event = self._decode_pdu(pdu)
        except Exception:
            log.warning("a DICOM peer sent a PDU that does not decode")
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(decoded)

    def peer_sent(self) -> bool:
        """Whether bytes from the peer wait to be read (never waits itself)."""
        association_socket = self.socket
        raw = association_socket.socket if association_socket is not None else None
        if raw is None or association_socket is None or not association_socket._is_connected:
            return False
        if isinstance(raw, ssl.SSLSocket) and raw.pending():
            return True
        try:
            return bool(select.select([raw], [], [], 0)[0])
        except (OSError, ValueError):
            return False

    def write(self, data: bytes | memoryview) -> bool:
        """Write bytes of the direct paths to the peer, whole; False when they could not go. A write that
        fails or times out (a peer that stopped reading) shuts the connection: half a PDU may have gone,
        and pynetdicom, which queues Evt17 for it as its own send does, acts only once this thread is free
        again, so a direct operation must stop here instead of timing out once per response."""
        with self.write_lock:
            association_socket = self.socket
            raw = association_socket.socket if association_socket is not None else None
            if self.write_failed or raw is None:
                return False
            try:
                raw.sendall(data)
            except (OSError, ValueError):
                self.write_failed = True
                with contextlib.suppress(OSError):
                    raw.shutdown(socket.SHUT_RDWR)
                self.event_queue.put("Evt17")
                return False
            return True

    def _send(self, pdu: Any) -> None:
        with self.write_lock:
            if not self.write_failed:
                super()._send(pdu)

    def idle_timer_expired(self) -> bool:
        interceptor = self.interceptor
        held = self.answering or (interceptor is not None and interceptor.holds_idle_timer)
        return not held and bool(super().idle_timer_expired())

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self.wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            # pynetdicom's sets the kill flag itself (no kill_dul) and waits for the thread to end: wake it
            self._kill_thread = True
            self.wake()
        return bool(super().stop_dul())

    def wake(self) -> None:
        # a full socket pair means a wake-up is pending already; a closed one, that the thread has ended
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        finally:
            self._wake_reader.close()
            self._wake_writer.close()

    def idle_wait(self) -> None:
        """Until the peer sent something, a primitive was queued, or ``_IDLE_WAIT`` passed."""
        watched: list[Any] = [self._wake_reader]
        association_socket = self.socket
        raw = association_socket.socket if association_socket is not None else None
        if raw is not None and association_socket is not None and association_socket._is_connected:
            if isinstance(raw, ssl.SSLSocket) and raw.pending():
                return  # decrypted bytes wait in the TLS layer, which select() does not see
            watched.append(raw)
        try:
            ready, _, _ = select.select(watched, [], [], _IDLE_WAIT)
        except (OSError, ValueError):  # the socket closed meanwhile: the loop finds out
            time.sleep(_POLL)
            return
        if self._wake_reader in ready:
            with contextlib.suppress(OSError):
                while self._wake_reader.recv(4096):
                    pass


_BaseAssociation = _association.Association


class _Checkpoint(threading.Event):
    """An association reactor's pause checkpoint: clearing it also wakes the reactor's wait, so that it
    reaches the checkpoint (and pauses) at once; ``blocked`` tells that the reactor is held there."""

    def __init__(self, messages: queue.Queue[Any]) -> None:
        super().__init__()
        self._messages = messages
        self.blocked = False  # the reactor waits here on a cleared checkpoint: it takes no message
        self.set()

    def clear(self) -> None:
        super().clear()
        with self._messages.not_empty:
            self._messages.not_empty.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """The reactor's pause (pynetdicom waits without a timeout). Woken by a ``set`` that another
        sender's ``clear`` undid before this thread ran, it stays paused: that sender saw it paused."""
        if self.is_set():
            return True
        self.blocked = True
        try:
            while not self.is_set():
                if not super().wait(timeout) and timeout is not None:
                    return False
            return True
        finally:
            self.blocked = False


class EventDrivenAssociation(_BaseAssociation):
    """pynetdicom's Association with an EventDrivenDUL (built by Association.__init__ once installed), a
    waking pause checkpoint, and a pause flag that cannot be stale.

    pynetdicom's reactor sets ``_is_paused`` just before it looks at its checkpoint and resets it just
    after: a ``send_*`` that clears the checkpoint in between finds the flag set, sends, and the reactor,
    running on, may take the response off the queue as a request of its own; the sender then waits for
    the DIMSE timeout and aborts (with the event-driven loops a response comes back within that window:
    about one echo in 200 under CPU load). Here the flag is derived instead: paused while the reactor is
    held at a cleared checkpoint, while it serves a request (its own ``send_*`` calls, as pynetdicom's
    ``_serve_request`` intends), once killed, or when its thread does not run."""

    def __init__(self, ae: ApplicationEntity, mode: str) -> None:
        super().__init__(ae, mode)
        self._reactor_checkpoint = _Checkpoint(self.dimse.msg_queue)

    @property  # type: ignore[override]
    def _is_paused(self) -> bool:
        checkpoint = self.__dict__.get("_reactor_checkpoint")
        return bool(
            self.__dict__.get("_kill", False)
            or threading.current_thread() is self
            or not self.is_alive()
            or (isinstance(checkpoint, _Checkpoint) and checkpoint.blocked)
        )

    @_is_paused.setter
    def _is_paused(self, value: bool) -> None:
        pass  # pynetdicom's assignments: see the class docstring

    serving = False  # its thread serves a request the peer sent (the direct paths then take none)

    def _serve_request(self, msg: Any, context_id: int) -> None:
        self.serving = True
        try:
            super()._serve_request(msg, context_id)
        finally:
            self.serving = False

    def kill(self) -> None:
        self._kill = True
        wake_reactor(self)  # its loop ends at once, not at the end of its wait
        super().kill()

    # sends a stored instance itself, or returns None (dimse/direct_send.py, set by its install())
    stored_sender: Any = None

    def send_c_store(
        self,
        dataset: Any,
        msg_id: int = 1,
        priority: int = 2,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> Any:
        # a C-MOVE's store association names the AE that asked for the move (retrieve.handle_move);
        # pynetdicom's C-MOVE service would name this one
        originator_aet = getattr(self, "move_originator", None) or originator_aet
        sender = type(self).stored_sender
        if sender is not None and getattr(dataset, "stored_bytes", None) is not None:
            status = sender(self, dataset, msg_id, priority, originator_aet, originator_id)
            if status is not None:
                return status
        return super().send_c_store(dataset, msg_id, priority, originator_aet, originator_id)


class _WakingQueue(queue.Queue[Any]):
    """A DUL's queue of primitives for its association (the peer's release request, an abort): a put
    wakes the association's reactor, which acts on them."""

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self._assoc = assoc

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        wake_reactor(self._assoc)


def wake_reactor(assoc: Association) -> None:
    dimse = getattr(assoc, "dimse", None)
    if dimse is not None:
        messages = dimse.msg_queue
        with messages.not_empty:
            messages.not_empty.notify_all()


def _wait_for_message(assoc: Association, timeout: float) -> None:
    """At most ``timeout``, less when a DIMSE message is (or becomes) ready for the association, a sender
    asks its reactor to pause, the DUL hands it a primitive or it is killed (all of which notify the
    message queue's condition, under whose lock this looks)."""
    messages = assoc.dimse.msg_queue
    with messages.not_empty:
        if (
            not messages.queue
            and assoc._reactor_checkpoint.is_set()
            and not assoc.dul.to_user_queue.queue
            and not assoc._kill
        ):
            messages.not_empty.wait(timeout)


class _PynetdicomTime:
    """The ``time`` module as pynetdicom's dul and association modules see it after ``install()``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        thread = threading.current_thread()
        if isinstance(thread, EventDrivenDUL) and not thread.answering:
            thread.idle_wait()  # the reactor's only sleep: a pass that found nothing to do
        elif isinstance(thread, EventDrivenAssociation) and seconds == _POLL:
            _wait_for_message(thread, _REACTOR_WAIT)
        else:
            time.sleep(seconds)


_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Make this process's pynetdicom associations event-driven (idempotent)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        shim: Any = _PynetdicomTime()
        _dul.time = shim  # type: ignore[attr-defined]
        _association.time = shim  # type: ignore[attr-defined]
        _association.DULServiceProvider = EventDrivenDUL  # type: ignore[misc]
        # requested associations are built in ae.py, accepted ones by a local import in transport.py
        _ae.Association = EventDrivenAssociation  # type: ignore[misc]
        _association.Association = EventDrivenAssociation  # type: ignore[misc]
        _installed = True
