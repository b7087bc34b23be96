"""CloudObjectStore against real emulators (moto's S3 server, Azurite): the ObjectStore contract, crash
recovery, the orphan listing, a large instance in bounded memory, and an unreachable or silent store."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import obstore
import pytest

from dicomd.config import Settings
from dicomd.storage import DICOM, METADATA, StorageUnavailable, open_store
from dicomd.storage.cloud import CloudObjectStore, azure_connection_options, parse_options, public_url

from support.emulators import Emulator, emulator_for
from support.server import free_port


@pytest.fixture(params=["s3", "azure"])
def emulator(request: pytest.FixtureRequest) -> Emulator:
    return emulator_for(request, request.param)


@pytest.fixture
def make_store(emulator: Emulator, tmp_path: Path) -> Iterator[tuple[CloudObjectStore, str, str]]:
    """A store on a fresh bucket: (store, url, options); more on the same bucket via CloudObjectStore."""
    url, options = emulator.new_store()
    store = CloudObjectStore(url, options, staging_dir=tmp_path / "staging", timeout=10)
    store.check()
    yield store, url, options
    store.close()


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _stage(store: CloudObjectStore, key: str, data: bytes, metadata: bytes = b"{}\n") -> None:
    assert asyncio.run(store.stage(key, _chunks(data[:5], data[5:]), keep=1 << 20)) == data
    store.stage_metadata(key, metadata)


def test_stage_sync_publish_read_delete(make_store: tuple[CloudObjectStore, str, str]) -> None:
    store, _, _ = make_store
    key = store.new_key()
    _stage(store, key, b"dicom-bytes")
    store.sync([key])
    assert store.read(key) == b"dicom-bytes"  # readable once acknowledged, before publish
    store.publish([key])
    assert store.staged_names() == []
    assert store.read(key, METADATA) == b"{}\n"
    assert store.read_range(key, 6, 5) == b"bytes"
    assert store.read_range(key, 6, 0) == b""
    assert b"".join(store.iter_chunks(key, chunk_size=3)) == b"dicom-bytes"
    assert store.size(key) == 11
    with store.open_object(key) as f:
        f.seek(6)
        assert f.read(3) == b"byt"
        assert f.read() == b"es"
        f.seek(-5, io.SEEK_END)
        assert f.read(100) == b"bytes"
    with store.local_file(key) as path:
        assert Path(path).read_bytes() == b"dicom-bytes"
        assert Path(path).stat().st_mode & 0o777 == 0o600
    assert not Path(path).exists()
    store.replace_derived(key, METADATA, b'{"new": 1}\n')
    assert store.read(key, METADATA) == b'{"new": 1}\n'
    store.delete(key)
    store.delete(key)  # idempotent
    for read in (store.read, store.size, store.open_object):
        with pytest.raises(FileNotFoundError):
            read(key)
    with pytest.raises(FileNotFoundError):
        store.read(key, METADATA)
    with pytest.raises(FileNotFoundError), store.local_file(key):
        pass
    with pytest.raises(FileNotFoundError):
        list(store.iter_chunks(key))
    store.replace_derived(key, METADATA, b"{}\n")  # deleted: nothing is put back
    with pytest.raises(FileNotFoundError):
        store.read(key, METADATA)


def test_a_batch_is_uploaded_whole_and_discard_removes_uploaded_objects(
    make_store: tuple[CloudObjectStore, str, str],
) -> None:
    store, _, _ = make_store
    keys = [store.new_key() for _ in range(40)]
    for i, key in enumerate(keys):
        _stage(store, key, f"instance {i}".encode() * 100)
    store.sync(keys)
    assert [store.read(key) for key in keys] == [f"instance {i}".encode() * 100 for i in range(40)]
    # a commit that failed after the sync (or duplicates): the uploaded objects go too
    store.discard_staged(keys[0])
    with pytest.raises(FileNotFoundError):
        store.read(keys[0])
    store.publish(keys[1:])
    assert store.staged_names() == []
    assert store.read(keys[1], METADATA) == b"{}\n"


class _SlowRelay:
    """A TCP relay to the emulator that holds each piece a client sends for a moment (a distant store)
    and records the most connections open through it at once: concurrent requests need connections of
    their own."""

    def __init__(self, target: tuple[str, int], delay: float = 0.05) -> None:
        self.delay = delay
        self.peak = 0
        self._open = 0
        self._lock = threading.Lock()
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self._open += 1
                self.peak = max(self.peak, self._open)
            server = socket.create_connection(self._target)
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, 0.0), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        self._pipe(client, server, self.delay)
        with self._lock:
            self._open -= 1

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, delay: float) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                time.sleep(delay)
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


def test_read_many_reads_concurrently_in_order_with_none_for_a_missing_object(
    emulator: Emulator, make_store: tuple[CloudObjectStore, str, str], tmp_path: Path
) -> None:
    writer, url, options = make_store
    keys = [writer.new_key() for _ in range(32)]
    for i, key in enumerate(keys):
        _stage(writer, key, f"instance {i}".encode() * 50, metadata=f'{{"i": {i}}}\n'.encode())
    writer.sync(keys)
    writer.publish(keys)
    host_port = emulator.endpoint.split("//", 1)[1].split("/", 1)[0]
    relay = _SlowRelay(("127.0.0.1", int(host_port.rsplit(":", 1)[1])))
    store = CloudObjectStore(
        url, options.replace(host_port, f"127.0.0.1:{relay.port}"), staging_dir=tmp_path / "r", timeout=10
    )
    try:
        missing = store.new_key()
        wanted = [*reversed(keys[:16]), missing, *keys[16:]]
        got = store.read_many(wanted)
        assert got == [None if k == missing else f"instance {keys.index(k)}".encode() * 50 for k in wanted]
        # one after the other needs one connection at a time; 16 GETs held in flight need their own
        assert relay.peak >= 8
        assert store.read_many(keys[:3], METADATA) == [b'{"i": 0}\n', b'{"i": 1}\n', b'{"i": 2}\n']
        assert store.read_many([missing]) == [None]
        assert store.read_many([]) == []
    finally:
        store.close()
        relay.close()


def test_sync_of_a_missing_staged_file_fails(make_store: tuple[CloudObjectStore, str, str]) -> None:
    store, _, _ = make_store
    good, lost = store.new_key(), store.new_key()
    _stage(store, good, b"good")
    with pytest.raises(FileNotFoundError):
        store.sync([good, lost])
    with pytest.raises(FileNotFoundError):  # what was acknowledged was removed again
        store.read(good)


def test_recover_uploads_committed_and_removes_the_rest(
    make_store: tuple[CloudObjectStore, str, str], tmp_path: Path
) -> None:
    store, url, options = make_store
    synced, unsynced, orphan = store.new_key(), store.new_key(), store.new_key()
    for key in (synced, unsynced, orphan):
        _stage(store, key, key.encode())
    store.sync([synced, orphan])  # a crash after the upload, before (or without) the commit
    committed = {synced, unsynced}
    other = CloudObjectStore(url, options, staging_dir=tmp_path / "staging", timeout=10)
    assert other.recover(committed.__contains__) == (0, 0)  # the owner lives
    store.close()  # as at the owner's death: the kernel drops its lock
    assert other.recover(committed.__contains__) == (2, 1)
    assert other.read(synced) == synced.encode() and other.read(unsynced) == unsynced.encode()
    assert other.read(unsynced, METADATA) == b"{}\n"
    with pytest.raises(FileNotFoundError):
        other.read(orphan)
    assert list((tmp_path / "staging").iterdir()) == []
    other.close()


def test_iter_stored_lists_each_old_enough_key_once(make_store: tuple[CloudObjectStore, str, str]) -> None:
    store, _, _ = make_store
    keys = sorted(store.new_key() for _ in range(3))
    for key in keys:
        _stage(store, key, b"x")
    store.sync(keys)
    store.publish(keys)
    store.stage_metadata(staged := store.new_key(), b"{}")  # staged only: recover's, not listed
    for foreign in ("notes.txt", f"{keys[0][:3]}/notes.txt", f"zzz/{keys[0]}.dcm"):  # not ours
        obstore.put(store._remote, foreign, b"someone else's")
    time.sleep(1.1)
    assert sorted(store.iter_stored(older_than=1)) == keys
    assert list(store.iter_stored(older_than=3600)) == []
    store.discard_staged(staged)


def test_a_large_instance_is_uploaded_and_read_in_bounded_memory(
    make_store: tuple[CloudObjectStore, str, str], tmp_path: Path
) -> None:
    """200 MB through stage, sync (multipart) and iter_chunks in a fresh process whose peak RSS grows by
    far less than the instance."""
    _, url, options = make_store
    script = f"""
import asyncio, hashlib, resource, sys
from pathlib import Path
from dicomd.storage.cloud import CloudObjectStore
store = CloudObjectStore({url!r}, {options!r}, staging_dir=Path({str(tmp_path / "big")!r}), timeout=30)
store.check()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
block = bytes(range(256)) * 4096  # 1 MiB
async def chunks():
    for i in range(200):
        yield block[i:] + block[:i]
key = store.new_key()
asyncio.run(store.stage(key, chunks()))
store.sync([key])
store.publish([key])
digest = hashlib.sha256()
for chunk in store.iter_chunks(key):
    digest.update(chunk)
print(digest.hexdigest(), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""
    expected = hashlib.sha256()
    block = bytes(range(256)) * 4096
    for i in range(200):
        expected.update(block[i:] + block[:i])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    digest, growth_mib = done.stdout.split()
    assert digest == expected.hexdigest()
    assert int(growth_mib) < 120, f"peak RSS grew by {growth_mib} MiB for a 200 MiB instance"


def test_an_unreachable_store_is_unavailable_fast_without_secrets(tmp_path: Path) -> None:
    port = free_port()  # nothing listens
    options = f"aws_endpoint=http://127.0.0.1:{port},aws_region=us-east-1,aws_access_key_id=AKIDSECRET"
    options += ",aws_secret_access_key=VERY-SECRET-VALUE"
    started = time.monotonic()
    settings = Settings(
        data_dir=tmp_path, storage_url="s3://bucket/prefix", storage_options=options, storage_timeout=2
    )
    with pytest.raises(StorageUnavailable) as failure:
        open_store(settings)
    assert time.monotonic() - started < 6
    message = str(failure.value)
    assert "s3://bucket/prefix" in message
    assert "SECRET" not in message and "AKID" not in message
    assert failure.value.__cause__ is None and failure.value.__suppress_context__


def test_a_missing_bucket_fails_the_start_with_a_clear_message(emulator: Emulator, tmp_path: Path) -> None:
    url, options = emulator.new_store()
    bucket = url.split("/")[2]
    missing = url.replace(bucket, bucket + "x")
    settings = Settings(data_dir=tmp_path, storage_url=missing, storage_options=options)
    with pytest.raises(StorageUnavailable, match="does not exist"):
        open_store(settings)


def test_open_store_picks_the_backend_by_url(emulator: Emulator, tmp_path: Path) -> None:
    url, options = emulator.new_store()
    store = open_store(Settings(data_dir=tmp_path, storage_url=url, storage_options=options))
    assert isinstance(store, CloudObjectStore)
    assert store.staging_root == (tmp_path / "staging").resolve()
    store.close()
    local = open_store(Settings(data_dir=tmp_path, storage_url=(tmp_path / "objects").as_uri()))
    assert not isinstance(local, CloudObjectStore)
    local.close()


def test_invalid_options_name_keys_not_values(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, storage_url="s3://bucket", storage_options="no_such_option=SECRET-VALUE"
    )
    with pytest.raises(ValueError, match="no_such_option") as failure:
        open_store(settings)
    assert "SECRET" not in str(failure.value)


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An endpoint that accepts connections and never answers (a hung store)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for connection in accepted:
        connection.close()
    listener.close()


def test_a_silent_store_times_out_as_unavailable(silent_endpoint: str, tmp_path: Path) -> None:
    options = (
        f"aws_endpoint={silent_endpoint},aws_region=us-east-1,aws_access_key_id=a,aws_secret_access_key=b"
    )
    store = CloudObjectStore("s3://bucket/p", options, staging_dir=tmp_path / "staging", timeout=1)
    key = store.new_key()
    _stage(store, key, b"data")
    for operation in (
        lambda: store.sync([key]),
        lambda: store.read(key),
        lambda: store.read_range(key, 0, 2),
        lambda: store.read_many([key, store.new_key()]),  # not "missing": unavailable
    ):
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            operation()
        assert time.monotonic() - started < 5  # storage_timeout bounds each request and its retries
    store.discard_staged(key)
    assert store.staged_names() == []
    store.close()


def test_storage_unavailable_is_not_an_oserror() -> None:
    """Ingest maps OSError to out-of-resources or processing failures; an unavailable store is neither."""
    assert not issubclass(StorageUnavailable, OSError)
    assert DICOM == "dcm"


def test_recovery_waits_for_an_unavailable_store(tmp_path: Path) -> None:
    closed = f"aws_endpoint=http://127.0.0.1:{free_port()},aws_region=us-east-1"
    dead = CloudObjectStore("s3://bucket/p", closed, staging_dir=tmp_path / "staging", timeout=1)
    key = dead.new_key()
    _stage(dead, key, b"data")
    dead.close()
    recoverer = CloudObjectStore("s3://bucket/p", closed, staging_dir=tmp_path / "staging", timeout=1)
    assert recoverer.recover(lambda k: False) == (0, 0)  # not an error: the next recover finishes it
    assert [name.split("/")[1] for name in recoverer.staged_names()] == [f"{key}.dcm", f"{key}.json"]
    recoverer.close()


def test_azure_connection_strings() -> None:
    key = "a2V5+/=="
    assert azure_connection_options(
        f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net"
    ) == {"account_name": "acct", "account_key": key, "endpoint": "https://acct.blob.core.windows.net"}
    assert azure_connection_options("UseDevelopmentStorage=true") == {"use_emulator": "true"}
    sas = "sv=2021-08-06&ss=b&sig=abc%3D"
    assert azure_connection_options(f"BlobEndpoint=https://x.example/;SharedAccessSignature={sas}") == {
        "endpoint": "https://x.example/",
        "sas_key": sas,
    }
    assert public_url("az://user:secret@container/prefix?sig=SECRET") == "az://container/prefix"
    assert parse_options(" Aws_Region = eu-west-1 ,token=a=b") == {"aws_region": "eu-west-1", "token": "a=b"}
