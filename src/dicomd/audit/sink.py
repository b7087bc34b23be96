"""Where audit events go: JSON lines appended to a file (or standard output) by one writer thread per
worker process, so that the event loop only queues a line.

Each batch of whole lines is one ``os.write`` on an ``O_APPEND`` descriptor: the kernel appends it at the
end of the file as one piece (local file systems), so the lines of several worker processes never
interleave. A new file is created owner-only (0600): it is a PHI store. The writer gathers lines for a few
milliseconds after a wake-up, so a killed process may lose the events of its last milliseconds; it syncs
at most once a second, so a power loss may cost the last second of events.

Log rotation by rename (logrotate's default, no copytruncate): the writer checks at most once a second
whether the path still names the file it writes, and opens the path anew when not.

A write that fails (a full disk, an I/O error) is logged without the events and retried every second with
everything not yet written, kept up to ``MAX_PENDING_BYTES``; meanwhile ``failing`` is true, which the
middleware turns into 503 answers (fail-closed: no access to PHI goes unrecorded for long)."""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections import deque

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
SYNC_SECONDS = 1.0
ROTATION_CHECK_SECONDS = 1.0
MAX_BATCH_BYTES = 1 << 20  # lines joined into one write
MAX_PENDING_BYTES = 64 << 20  # kept while writes fail; older lines beyond this are dropped (and counted)
# the writer waits this long after a wake-up for more lines: under load the event loop wakes it (a costly
# thread switch) once per batch instead of once per request; a process crash may lose these lines
LINGER_SECONDS = 0.005


_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class AuditSink:
    """Appends lines to ``target`` (a file path, or "-" for standard output) from a thread of its own."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._lines: deque[bytes] = deque()  # append and popleft are atomic: no lock
        self._wake = threading.Event()
        self._stopping = False
        self._fd: int | None = None
        self._regular_file = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._failing = False
        self._last_rotation_check = 0.0

    @property
    def failing(self) -> bool:
        """True while the last write failed (until a retry succeeds)."""
        return self._failing

    def open(self) -> None:
        """Opens the target and starts the writer; raises OSError when the file cannot be opened. Once."""
        with self._lock:
            if self._thread is not None:
                return
            if self.target == "-":
                self._fd = os.dup(1)  # standard output, closed independently of sys.stdout
            else:
                self._fd = os.open(self.target, _APPEND_FLAGS, 0o600)
            self._regular_file = stat.S_ISREG(os.fstat(self._fd).st_mode)
            self._thread = threading.Thread(target=self._run, name="dicomd-audit", daemon=True)
            self._thread.start()

    def write(self, line: bytes) -> None:
        """Queues one line (ending in a newline); never blocks."""
        self._lines.append(line)
        if not self._wake.is_set():
            self._wake.set()

    def close(self, timeout: float = 10.0) -> None:
        """Writes what is queued (retrying for at most ``timeout`` seconds) and closes the target."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        thread.join(timeout)
        if thread.is_alive():
            log.error("the audit writer did not finish within %.0f s; queued audit events are lost", timeout)
            return
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # ---- the writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        pending = bytearray()  # whole lines not yet written (a failed write's tail included)
        dropped = 0
        last_sync = last_attempt = time.monotonic()
        unsynced = stopping = False
        while not (stopping and not self._lines):
            self._wake.wait(RETRY_SECONDS if (pending or unsynced) else None)
            self._wake.clear()
            stopping = self._stopping
            if not stopping:
                # while failing, new lines (503s' events) do not make the writer retry sooner
                wait = last_attempt + RETRY_SECONDS - time.monotonic() if self._failing else LINGER_SECONDS
                time.sleep(max(0.0, wait))
            while self._lines and (len(pending) < MAX_BATCH_BYTES or self._failing):
                pending += self._lines.popleft()
            if self._lines:  # a full batch: come back at once for the rest
                self._wake.set()
            if len(pending) > MAX_PENDING_BYTES:
                cut = pending.index(b"\n", len(pending) - MAX_PENDING_BYTES) + 1
                dropped += pending.count(b"\n", 0, cut)
                del pending[:cut]
            if pending:
                last_attempt = time.monotonic()
                written = self._write(pending)
                del pending[:written]
                unsynced = unsynced or written > 0
                if pending and stopping and not self._lines:
                    log.error("audit events could not be written before shutdown (%d bytes)", len(pending))
            if dropped and not self._failing:
                log.error("%d audit events were dropped while the audit trail could not be written", dropped)
                dropped = 0
            if unsynced and self._regular_file and (stopping or time.monotonic() - last_sync >= SYNC_SECONDS):
                self._sync()
                last_sync, unsynced = time.monotonic(), False

    def _reopen_if_rotated(self) -> None:
        """Open the path anew when the file written so far was renamed or removed (rotation)."""
        now = time.monotonic()
        if (
            self.target == "-"
            or not self._regular_file
            or now - self._last_rotation_check < ROTATION_CHECK_SECONDS
        ):
            return
        self._last_rotation_check = now
        assert self._fd is not None
        current = os.fstat(self._fd)
        try:
            named = os.stat(self.target)
            if (named.st_dev, named.st_ino) == (current.st_dev, current.st_ino):
                return
        except FileNotFoundError:
            pass
        try:
            fd = os.open(self.target, _APPEND_FLAGS, 0o600)
        except OSError:  # the write that follows goes to the old file; the next check tries again
            return
        os.fdatasync(self._fd)  # what went to the rotated file is kept
        os.close(self._fd)
        self._fd = fd
        log.info("the audit file was rotated; writing to a new one")

    def _write(self, data: bytearray) -> int:
        """Writes ``data``; returns how many bytes went (all, unless the write failed)."""
        assert self._fd is not None
        try:
            self._reopen_if_rotated()
        except OSError as exc:
            log.warning(
                "the audit file's rotation check failed (%s)", errno.errorcode.get(exc.errno or 0, "?")
            )
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                # a short write happens only when the disk fills up mid-batch; the rest follows
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            if not self._failing:
                log.error(
                    "the audit trail cannot be written (%s); versioned API requests get 503 until it can",
                    errno.errorcode.get(exc.errno or 0, type(exc).__name__),
                )
            self._failing = True
            return done
        finally:
            view.release()
        if self._failing:
            log.warning("the audit trail is written again")
        self._failing = False
        return done

    def _sync(self) -> None:
        assert self._fd is not None
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            log.warning("the audit file could not be synced (%s)", errno.errorcode.get(exc.errno or 0, "?"))
