"""Object stores on S3 (and S3-compatible services), Azure Blob Storage and Google Cloud Storage, through
obstore: the cloud ``ObjectStore`` (storage/base.py).

Writes stage locally exactly as ``LocalObjectStore``'s do (``StagingStore``: the parser memory-maps a local
file; staging areas are claimed by flock and recovered when their owner dies). ``sync`` uploads each
staged DICOM object and its metadata object and returns only once the store acknowledged all of them:
that acknowledgement is the durability behind a 2xx. ``publish`` then only removes the local copies.
Reads go to the store: ranged GETs for frames and bulk data, a streamed GET for whole files, concurrent
GETs for the many objects of a study (``read_many``), a temporary download for the parser.

Objects are named ``<prefix>/<key[:3]>/<key>.dcm|json``; keys are random (no PHI in names). Credentials
come from ``storage_options`` or the backend's usual environment variables (obstore reads AWS_*,
AZURE_STORAGE_*, GOOGLE_*; instance, workload and managed identities where obstore supports them) and
never appear in logs or error messages.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.store import from_url

from dicomd.storage.base import DICOM, METADATA, SUFFIXES, AreaCheck, StorageUnavailable
from dicomd.storage.local import (
    _TEMPORARY,
    StagingStore,
    create_file,
    is_object_name,
    new_key,
)

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig
    from obstore.store import ObjectStore as RemoteStore

__all__ = ["CloudObjectStore", "azure_connection_options", "parse_options", "public_url"]

log = logging.getLogger(__name__)

# Objects up to this size go up in one request (read into memory first); larger ones in a multipart
# upload streamed from the staged file in parts of this size, a few parts in flight: memory stays bounded
# (upload threads x single put + part size x parts in flight) whatever the size of an instance.
_SINGLE_PUT_BYTES = 4 << 20
_PART_BYTES = 8 << 20
_PARTS_IN_FLIGHT = 4
# objects uploaded at once: a batch of small instances costs a few round trips, not one per object
_UPLOAD_THREADS = 16
# GETs at once for read_many (per process, shared by its requests): a study's instances or metadata
# objects cost a few round trips instead of one per object
_READ_THREADS = 16
# pieces of a download for the parser (local_file)
_READ_BUFFER = 1 << 20

# storage_options keys that configure obstore's HTTP client rather than the store
_CLIENT_OPTIONS = {
    "allow_http",
    "allow_invalid_certificates",
    "connect_timeout",
    "default_content_type",
    "http1_only",
    "http2_only",
    "pool_idle_timeout",
    "pool_max_idle_per_host",
    "proxy_url",
    "proxy_ca_certificate",
    "proxy_excludes",
    "randomize_addresses",
    "read_timeout",
    "root_certificate",
    "timeout",
    "user_agent",
}
_BOOLEAN_CLIENT_OPTIONS = {
    "allow_http",
    "allow_invalid_certificates",
    "http1_only",
    "http2_only",
    "randomize_addresses",
}
_CONNECTION_STRING_OPTIONS = ("connection_string", "azure_storage_connection_string")
# Azure connection string fields and the obstore options they become
_CONNECTION_STRING_FIELDS = {
    "accountname": "account_name",
    "accountkey": "account_key",
    "blobendpoint": "endpoint",
    "sharedaccesssignature": "sas_key",
}
_REMOTE_ERRORS = (ObstoreError, TimeoutError, ConnectionError)
_QUERY = re.compile(r"(https?://[^\s?]*)\?\S*")


def public_url(url: str) -> str:
    """The store's URL without credentials or query (for messages and logs)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{parts.path}"


def parse_options(text: str) -> dict[str, str]:
    """``storage_options`` (``key=value,...``; config.py validated the form) as a dict, keys lowercased."""
    options: dict[str, str] = {}
    for pair in text.split(","):
        if pair.strip():
            key, value = pair.split("=", 1)
            options[key.strip().lower()] = value.strip()
    return options


def azure_connection_options(text: str) -> dict[str, str]:
    """obstore's options for an Azure connection string (account key, SAS, Azurite's or development
    storage); its values may contain '=' (base64 keys, SAS)."""
    fields: dict[str, str] = {}
    for part in text.split(";"):
        if "=" in part:
            name, value = part.split("=", 1)
            fields[name.strip().lower()] = value.strip()
    options = {
        option: fields[field] for field, option in _CONNECTION_STRING_FIELDS.items() if fields.get(field)
    }
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        options["use_emulator"] = "true"
    elif "endpoint" not in options and "account_name" in options and "endpointsuffix" in fields:
        protocol = fields.get("defaultendpointsprotocol", "https")
        options["endpoint"] = f"{protocol}://{options['account_name']}.blob.{fields['endpointsuffix']}"
    return options


def _summary(exc: BaseException) -> str:
    """The first line of an obstore error, query strings (which may hold a SAS) removed."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _QUERY.sub(r"\1?…", first)[:300]


class CloudObjectStore(StagingStore):
    """The ``ObjectStore`` on S3, Azure Blob Storage or GCS (see the module's docstring)."""

    reads_are_local = False  # every read is a request to the store: never on the event loop

    def __init__(self, url: str, options: str = "", *, staging_dir: Path, timeout: float = 30) -> None:
        super().__init__(staging_dir)
        self.url = public_url(url)
        self.timeout = timeout
        self._remote = _open_remote(url, parse_options(options), timeout)
        self._uploads: ThreadPoolExecutor | None = None
        self._reads: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        # keys this process uploaded at sync and has not published yet: discard_staged removes their
        # remote objects too (others were never uploaded: no request needed)
        self._uploaded: set[str] = set()

    def check(self) -> None:
        """Raise StorageUnavailable (naming the store, no credentials) unless its prefix can be listed."""
        try:
            with self._errors():
                obstore.list_with_delimiter(self._remote)
            return
        except FileNotFoundError:
            missing = True
        except StorageUnavailable as exc:
            # S3 answers a list of a missing bucket with 404 NoSuchBucket, which obstore reports as a
            # generic error, not NotFound
            missing = " 404 " in str(exc)
            if not missing:
                raise
        if missing:
            raise StorageUnavailable(
                f"object store {self.url}: the bucket or container does not exist"
            ) from None

    def close(self) -> None:
        super().close()
        for pool in (self._uploads, self._reads):
            if pool is not None:
                pool.shutdown(wait=True)
        self._uploads = self._reads = None

    # ---- names and errors ----------------------------------------------------------------------
    @staticmethod
    def _name(key: str, suffix: str = DICOM) -> str:
        return f"{key[:3]}/{key}.{suffix}"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """obstore's failures as the protocol's: a missing object stays FileNotFoundError, anything else
        about the store (unreachable, timed out, refused) becomes StorageUnavailable, credentials and
        query strings left out."""
        try:
            yield
        except FileNotFoundError:
            raise
        except _REMOTE_ERRORS as exc:
            raise StorageUnavailable(f"object store {self.url} failed: {_summary(exc)}") from None

    def _pool(self) -> ThreadPoolExecutor:
        if self._uploads is None:
            with self._pool_lock:
                if self._uploads is None:
                    self._uploads = ThreadPoolExecutor(_UPLOAD_THREADS, thread_name_prefix="dicomd-upload")
        return self._uploads

    def _read_pool(self) -> ThreadPoolExecutor:
        # separate from the uploads: a retrieve does not queue behind a sync, nor a sync behind retrieves
        if self._reads is None:
            with self._pool_lock:
                if self._reads is None:
                    self._reads = ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="dicomd-read")
        return self._reads

    # ---- writes --------------------------------------------------------------------------------
    def _upload(self, path: str, name: str) -> None:
        """Upload a local file to ``name``; returns once the store acknowledged it."""
        with self._errors():
            size = os.stat(path).st_size
            if size <= _SINGLE_PUT_BYTES:
                with open(path, "rb") as f:
                    data = f.read()
                obstore.put(self._remote, name, data, use_multipart=False)
            else:
                obstore.put(
                    self._remote,
                    name,
                    Path(path),
                    use_multipart=True,
                    chunk_size=_PART_BYTES,
                    max_concurrency=_PARTS_IN_FLIGHT,
                )

    def sync(self, keys: Sequence[str]) -> None:
        """Upload the batch's staged DICOM and metadata objects, several at once, and return when the
        store acknowledged every one. On a failure the acknowledged ones are removed again (best effort:
        the orphan sweep finds what is left) and the first error is raised: StorageUnavailable, or
        OSError for a local fault."""
        area = self._own_area()
        jobs: list[tuple[str, str]] = []
        for key in keys:
            jobs.append((key, DICOM))
            if os.path.exists(f"{area}/{key}.{METADATA}"):  # derived: a missing one is rebuilt on read
                jobs.append((key, METADATA))
        pool = self._pool()
        futures = [
            pool.submit(self._upload, f"{area}/{key}.{suffix}", self._name(key, suffix))
            for key, suffix in jobs
        ]
        acknowledged: list[str] = []
        failure: BaseException | None = None
        for (key, suffix), future in zip(jobs, futures, strict=True):
            try:
                future.result()
                acknowledged.append(self._name(key, suffix))
            except BaseException as exc:  # every upload is waited for before anything is reported
                failure = failure or exc
        if failure is not None:
            with contextlib.suppress(StorageUnavailable):
                self._delete_names(acknowledged)
            raise failure
        self._uploaded.update(keys)

    def publish(self, keys: Iterable[str]) -> None:
        """The committed objects are in the store since ``sync``: drop the local copies."""
        area = self._own_area()
        for key in keys:
            self._uploaded.discard(key)
            for suffix in SUFFIXES:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{area}/{key}.{suffix}")

    def discard_staged(self, key: str) -> None:
        super().discard_staged(key)
        if key in self._uploaded:
            try:
                self._delete_names([self._name(key, suffix) for suffix in SUFFIXES])
            except StorageUnavailable:
                log.warning("could not remove the uploaded objects of %s: the orphan sweep will", key)
            self._uploaded.discard(key)

    def _delete_names(self, names: list[str]) -> None:
        if names:
            with self._errors(), contextlib.suppress(FileNotFoundError):
                obstore.delete(self._remote, names)

    def delete(self, key: str) -> None:
        """Remove both objects of a key (idempotent)."""
        self._delete_names([self._name(key, suffix) for suffix in SUFFIXES])

    def replace_derived(self, key: str, suffix: str, data: bytes) -> None:
        """Put the derived object (one request: readers see the old bytes or the new). When the DICOM
        object is gone (never stored, or deleted meanwhile) nothing is left behind."""
        if not self._exists(key, DICOM):
            return
        with self._errors():
            obstore.put(self._remote, self._name(key, suffix), data, use_multipart=False)
        if not self._exists(key, DICOM):  # deleted while we wrote
            self._delete_names([self._name(key, suffix)])

    def _exists(self, key: str, suffix: str) -> bool:
        try:
            with self._errors():
                obstore.head(self._remote, self._name(key, suffix))
        except FileNotFoundError:
            return False
        return True

    # ---- reads ----------------------------------------------------------------------------------
    def open_object(self, key: str, suffix: str = DICOM) -> BinaryIO:
        """A seekable file whose every read is one ranged GET of what was asked: unbuffered, since its
        readers (frames, bulk data, comparisons) read large pieces, each once."""
        size = self.size(key, suffix)
        name = self._name(key, suffix)
        return cast(BinaryIO, _RangeFile(lambda offset, length: self._get_range(name, offset, length), size))

    def _get_range(self, name: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        with self._errors():
            return obstore.get_range(self._remote, name, start=offset, length=length).to_bytes()

    def read(self, key: str, suffix: str = DICOM) -> bytes:
        with self._errors():
            return obstore.get(self._remote, self._name(key, suffix)).bytes().to_bytes()

    def read_many(self, keys: Sequence[str], suffix: str = DICOM) -> list[bytes | None]:
        """Concurrent GETs (at most ``_READ_THREADS`` at once per process), in the order of ``keys``.
        On an error the reads not started yet are dropped and the first error (in key order) raised."""
        if len(keys) <= 1:  # no hand-off to a thread for one object
            return [self._read_or_none(key, suffix) for key in keys]
        pool = self._read_pool()
        futures = [pool.submit(self._read_or_none, key, suffix) for key in keys]
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()  # a no-op for those done or running

    def _read_or_none(self, key: str, suffix: str) -> bytes | None:
        try:
            return self.read(key, suffix)
        except FileNotFoundError:
            return None

    def read_range(self, key: str, offset: int, length: int, suffix: str = DICOM) -> bytes:
        return self._get_range(self._name(key, suffix), offset, length)

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Streamed from one GET; the chunks are about ``chunk_size`` bytes (the network's pieces are
        gathered up to it)."""
        with self._errors():
            stream = obstore.get(self._remote, self._name(key)).stream(min_chunk_size=chunk_size)
            yield from stream

    def size(self, key: str, suffix: str = DICOM) -> int:
        with self._errors():
            return int(obstore.head(self._remote, self._name(key, suffix))["size"])

    @contextlib.contextmanager
    def local_file(self, key: str, suffix: str = DICOM) -> Iterator[str]:
        """A temporary download into this process's staging area (``recover`` removes one a crash
        leaves behind), removed after the block."""
        path = f"{self._own_area()}/{new_key()}{_TEMPORARY}"
        try:
            with open(create_file(path), "wb") as f, self._errors():
                for chunk in obstore.get(self._remote, self._name(key, suffix)).stream(
                    min_chunk_size=_READ_BUFFER
                ):
                    f.write(chunk)
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def iter_stored(self, older_than: float) -> Iterator[str]:
        """Keys of stored objects last modified more than ``older_than`` seconds ago, each once (a key's
        two objects are listed one after the other: names sort by key)."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
        previous = ""
        with self._errors():
            for page in obstore.list(self._remote, chunk_size=1000):
                for meta in page:
                    fan_out, _, name = meta["path"].rpartition("/")
                    if not is_object_name(fan_out, name):
                        continue  # not ours: never offered to the sweep, which would remove it
                    key = name.split(".", 1)[0]
                    if key != previous and meta["last_modified"] < cutoff:
                        previous = key
                        yield key

    # ---- crash recovery ------------------------------------------------------------------------
    def recover(
        self, is_committed: Callable[[str], bool], check_area: AreaCheck | None = None
    ) -> tuple[int, int]:
        """``StagingStore.recover``; while the store is unavailable, what is left stays staged for the
        next ``recover`` (a worker's start must not fail on it)."""
        try:
            return super().recover(is_committed, check_area)
        except StorageUnavailable as exc:
            log.warning("recovery of abandoned staged objects postponed: %s", exc)
            return 0, 0

    def _finish_committed(self, directory: Path, key: str) -> None:
        """A dead process's committed key: its sync uploaded it before the commit, so it is normally
        there already; upload what is missing, then drop the local copies."""
        for suffix in SUFFIXES:
            path = directory / f"{key}.{suffix}"
            if path.exists() and not self._exists(key, suffix):
                self._upload(str(path), self._name(key, suffix))
            path.unlink(missing_ok=True)

    def _remove_uncommitted(self, directory: Path, key: str) -> None:
        """A dead process's key the index does not name: its sync may have uploaded it."""
        self.delete(key)
        super()._remove_uncommitted(directory, key)


class _RangeFile(io.RawIOBase):
    """A remote object as a seekable raw file: each read is one ranged GET (``fetch(offset, length)``)."""

    def __init__(self, fetch: Callable[[int, int], bytes], size: int) -> None:
        self._fetch = fetch
        self._size = size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        length = min(len(buffer), self._size - self._position)
        if length <= 0:
            return 0
        data = self._fetch(self._position, length)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def readall(self) -> bytes:
        data = self._fetch(self._position, self._size - self._position)
        self._position += len(data)
        return data


def _open_remote(url: str, options: dict[str, str], timeout: float) -> RemoteStore:
    """The obstore store for ``url``: options split into the store's config and its HTTP client's,
    timeouts bounded by ``timeout`` (each request, and the retries of one operation)."""
    scheme = urlsplit(url).scheme
    if scheme in ("az", "azure", "abfs"):
        connection_string = next((options.pop(k) for k in _CONNECTION_STRING_OPTIONS if k in options), None)
        connection_string = connection_string or os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if connection_string:
            options = {**azure_connection_options(connection_string), **options}
    # a client option may be written with its backend's prefix (aws_allow_http, as object_store's
    # environment variables are): obstore wants it bare (it panics on the prefixed form)
    for name in list(options):
        bare = name.split("_", 1)[1] if name.startswith(("aws_", "azure_", "google_")) else name
        if bare != name and bare in _CLIENT_OPTIONS:
            options.setdefault(bare, options.pop(name))
    client: dict[str, Any] = {k: options.pop(k) for k in list(options) if k in _CLIENT_OPTIONS}
    for name in _BOOLEAN_CLIENT_OPTIONS & client.keys():
        client[name] = client[name].lower() in ("1", "true", "yes", "on")
    endpoint = next((v for k, v in options.items() if k.endswith("endpoint")), "")
    if endpoint.startswith("http://") or options.get("use_emulator", "").lower() == "true":
        client.setdefault("allow_http", True)  # the administrator named a plain-HTTP endpoint
    client.setdefault("timeout", f"{timeout}s")
    client.setdefault("connect_timeout", f"{min(timeout, 5)}s")
    retry: RetryConfig = {
        "max_retries": 2,
        "retry_timeout": timedelta(seconds=timeout),
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=2),
            "base": 2,
        },
    }
    try:
        return from_url(
            url, config=cast(Any, options), client_options=cast("ClientConfig", client), retry_config=retry
        )
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # obstore panics (pyo3 PanicException) on some options
        # the message may quote an option's value: name the store and the option keys only
        raise ValueError(
            f"object store {public_url(url)}: invalid storage_url or storage_options "
            f"(keys: {', '.join(sorted(options)) or 'none'}): {type(exc).__name__}"
        ) from None
