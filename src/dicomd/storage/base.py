"""The object store interface: what ingest, retrieve and the jobs ask of object storage.

``LocalObjectStore`` (storage/local.py) keeps objects in a directory; ``CloudObjectStore``
(storage/cloud.py: S3, Azure Blob, GCS) stages locally as it does (the parser reads a local file) and
uploads at ``sync``.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol

# An instance is two objects under one key: its DICOM file, byte-exact and irreplaceable, and its
# metadata (DICOM JSON), derived from the DICOM file and rebuilt from it when lost (ingest/metadata.py).
DICOM = "dcm"
METADATA = "json"
SUFFIXES = (DICOM, METADATA)


# check_area(staging area name, its directory): see ObjectStore.recover
AreaCheck = Callable[[str, Path], None]


def content_checksum(parts: Iterable[bytes | memoryview]) -> tuple[int, int]:
    """(size, CRC-32) of a staged file's bytes, as ``Stager.stage_file`` returns it for a copy."""
    size = checksum = 0
    for part in parts:
        size += len(part)
        checksum = zlib.crc32(part, checksum)
    return size, checksum


class StorageUnavailable(Exception):
    """The object store cannot be reached, refused the request or did not answer within
    ``storage_timeout``. The message names the store without credentials and holds no PHI; the API
    answers 503 with Retry-After. A missing object is FileNotFoundError instead."""


class Stager(Protocol):
    """The staging operations a process preparing instances needs (parse, stage the metadata).

    STOW uses the store itself; ``dicomd import`` hands ``ObjectStore.stager()`` to its pool processes
    (pickled). What they stage stays owned by the store's process, which alone syncs, publishes,
    discards and recovers it.
    """

    def staged_file(self, key: str, suffix: str = DICOM) -> str:
        """The local path of a staged object, to be read (parse, compare) while it is staged; never
        written, moved or removed by the caller."""
        ...

    def scratch_dir(self) -> str:
        """A local directory for the parser's temporary files (an inflated data set: up to 512 MiB),
        on the staging disk rather than a RAM-backed /tmp."""
        ...

    def stage_metadata(self, key: str, data: bytes) -> None:
        """Stage the metadata object of a staged instance (not made durable: see ``ObjectStore``)."""
        ...

    def stage_file(self, key: str, source: str) -> tuple[int, int]:
        """Stage a byte-exact copy of the local file ``source`` as the DICOM object of ``key``; returns
        the copy's (size, CRC-32)."""
        ...

    def stage_bytes(self, key: str, parts: Sequence[bytes | memoryview]) -> None:
        """Stage ``parts``, one after the other, as the DICOM object of ``key`` (the DIMSE listener's
        received instances, staged in the association's thread). On failure nothing of it stays staged
        and the error (an OSError) propagates."""
        ...


class ObjectStore(Stager, Protocol):
    """Object storage for instances, each stored version under a key of its own.

    Readers raise FileNotFoundError for a missing object and ``StorageUnavailable`` when the store
    cannot answer; ``sync`` raises either, or OSError for a local fault.

    Contract (each implementation meets it its own way):

    - Keys come from ``new_key``: random (no UIDs, no PHI in object names) and unique per stored
      version, so an object is never overwritten (a derived one aside, see ``replace_derived``) and an
      overwrite or delete never disturbs a reader of the previous version.
    - A write is stage, then ``sync``, then the index commit, then ``publish``. A 2xx on store means
      ``sync`` returned, i.e. the batch's DICOM objects are durable (fsync or syncfs of the staged files;
      for a cloud store, the service's acknowledgement of the upload), and then the index row was
      committed. (Where a SQLite index shares the local store's file system, the commit comes first,
      without its own flush, and the ``sync`` after it covers both: ingest/shared_flush.py.)
      A derived (metadata) object need not be durable: a crash may lose it or cut it short,
      and readers rebuild it.
    - ``publish`` runs only after the commit. Readers look objects up by keys the index names, so they
      find a committed object both before ``publish`` (wherever it is staged, by any process) and after.
      An object that ``sync`` already made visible before the commit is harmless for the same reason,
      as long as ``recover`` or ``discard_staged`` removes it when the index never names its key.
    - Staged objects belong to the process that staged them (directly or through its ``stager``).
      ``recover`` only touches what no live process owns, so any process may run it at any time.
    - ``delete`` is called by the cleanup job only, once the delete grace period has passed since the
      index dropped the key: a retrieve that listed the key before the delete still reads it.
    - Everything is written owner-only (the archive holds PHI).
    """

    # True when a read is a local file read (microseconds from the page cache): small reads may then be
    # made on the event loop. A remote store's reads are network round trips, always made in a thread.
    reads_are_local: bool

    def new_key(self) -> str:
        """A fresh object key."""
        ...

    async def stage(self, key: str, chunks: AsyncIterator[bytes], *, keep: int = 0) -> bytes | None:
        """Stage the DICOM object of ``key`` from a stream of chunks (memory stays bounded), returning
        its bytes when it is no longer than ``keep`` (for the caller to parse from memory), else None.

        On any failure (an OSError such as a full disk, an error or cancellation from ``chunks``)
        nothing of it stays staged and the error propagates; the rest of ``chunks`` is left unread."""
        ...

    def stager(self) -> Stager:
        """The staging operations for another process preparing instances for this one."""
        ...

    def sync(self, keys: Sequence[str]) -> None:
        """Make the staged DICOM objects of a batch durable. Raises when any of them may be lost."""
        ...

    def publish(self, keys: Iterable[str]) -> None:
        """Move committed staged objects into place (after the index commit). A failure leaves them
        readable where they are, and ``recover`` finishes them."""
        ...

    def discard_staged(self, key: str) -> None:
        """Drop the staged objects of a key the index does not name (idempotent)."""
        ...

    def open_object(self, key: str, suffix: str = DICOM) -> BinaryIO:
        """A seekable binary file of a committed object. Raises FileNotFoundError when it is gone."""
        ...

    def read(self, key: str, suffix: str = DICOM) -> bytes: ...

    def read_many(self, keys: Sequence[str], suffix: str = DICOM) -> list[bytes | None]:
        """The objects of ``keys`` (each read whole, as ``read`` does), in the order of ``keys``; None
        for a key whose object is missing. Any other error (``StorageUnavailable``, an OSError)
        propagates. A cloud store reads them concurrently (one GET each, a bounded number at once);
        the local store one after the other (page-cache reads: threads would only add overhead)."""
        ...

    def read_range(self, key: str, offset: int, length: int, suffix: str = DICOM) -> bytes: ...

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The DICOM object in chunks of ``chunk_size`` bytes (bounded memory)."""
        ...

    def size(self, key: str) -> int: ...

    def local_file(self, key: str, suffix: str = DICOM) -> AbstractContextManager[str]:
        """The path of a local file holding a committed object, valid inside the ``with`` block (for
        the parser, which memory-maps it). Raises FileNotFoundError when the object is gone."""
        ...

    def replace_derived(self, key: str, suffix: str, data: bytes) -> None:
        """Replace a derived object (metadata) of a committed instance, staged or published: readers
        see the old bytes or the new ones. Nothing is left behind when the instance is deleted
        meanwhile. Not made durable."""
        ...

    def delete(self, key: str) -> None:
        """Remove every object of a key, wherever it is (idempotent)."""
        ...

    def iter_stored(self, older_than: float) -> Iterator[str]:
        """The keys (each once) of stored objects last modified more than ``older_than`` seconds ago,
        for the sweep of objects no index row names. Staged objects are not listed (``recover``
        handles them); an object ``sync`` uploaded and the commit has not named yet is, once old
        enough: the sweep's grace period must exceed the longest commit."""
        ...

    def recover(
        self, is_committed: Callable[[str], bool], check_area: AreaCheck | None = None
    ) -> tuple[int, int]:
        """Finish what dead processes staged: publish the objects whose key the index names, remove
        the others. ``check_area(name, directory)`` first, for each dead process's staging area (see
        ingest/shared_flush.py). Returns (published, removed)."""
        ...

    def close(self) -> None:
        """Give up this process's staging; a later ``recover`` (by any process) finishes it."""
        ...
