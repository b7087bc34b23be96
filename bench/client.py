"""Load generator: a minimal HTTP/1.1 keep-alive client on asyncio streams (uvloop when present).

Why not httpx: per request httpx costs ~10x more client CPU than these ~60 lines, and on a 2-core
machine shared with the server under test every client microsecond is taken from the server. Each
job runs in its own process(es) (see `run_job` / `Pool`), reports its own CPU time, so every result
line says what the client cost.

A job is a JSON-able dict:
  kind        "stow" | "get" | "mixed"
  host, port, root
  targets     optional [[host, port], ...]: connection k (counted over all client processes) goes to
              targets[k % len]: client-side round-robin over replicas, no proxy in between
  concurrency connections (one request in flight each, no pipelining)
  duration    seconds after which no new request starts; max_ops caps the number of requests
  warmup      seconds of requests not recorded (GET jobs)
  stow:  corpus (CorpusSpec dict), start, stop (instance range), batch (instances per request)
  get:   paths (list, relative to root), accept (header value), shuffle seed
  mixed: weights {label: w}, paths {label: [..]}, accept {label: ..}; label "stow" writes `batch`
         instances from [start, stop)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from bench.corpus import Corpus, CorpusSpec

BOUNDARY = b"dicomdbenchboundary7d3f"
STOW_CT = f'multipart/related; type="application/dicom"; boundary={BOUNDARY.decode()}'
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_JSON = "application/dicom+json"
# frames in their stored transfer syntax (Explicit VR LE here): both servers answer without transcoding
ACCEPT_FRAME = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


class HttpError(Exception):
    pass


@dataclass(slots=True)
class Response:
    status: int
    nbytes: int
    body: bytes


class _Proto(asyncio.BufferedProtocol):
    """Incremental HTTP/1.1 response parser fed straight from the socket into a reusable buffer.

    Bodies the caller does not keep are only counted (no copy past the kernel's), so a retrieve at
    several GB/s costs the client little; chunked and Content-Length bodies are both handled.
    """

    def __init__(self) -> None:
        self.buf = bytearray(1 << 18)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.keep = True
        self._reset()
        self.closed = False
        self.can_write = asyncio.Event()
        self.can_write.set()

    def _reset(self) -> None:
        self.state = "head"
        self.acc = bytearray()
        self.parts: list[bytes] = []
        self.status = 0
        self.remaining = 0
        self.nbytes = 0
        self.close_after = False

    # -- asyncio callbacks --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self._feed(memoryview(self.buf)[:nbytes])
        except Exception as e:  # malformed response
            self._fail(e)

    def eof_received(self) -> bool:
        if self.state == "eof":
            self._done()
        else:
            self._fail(ConnectionResetError("connection closed by server"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.state == "eof":
            self._done()
        self._fail(exc or ConnectionResetError("connection lost"))

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    # -- parsing --
    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def _done(self) -> None:
        resp = Response(self.status, self.nbytes, b"".join(self.parts))
        close = self.close_after
        self._reset()
        if close and self.transport is not None:
            self.transport.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(resp)

    def _body(self, mv: memoryview) -> None:
        self.nbytes += len(mv)
        if self.keep:
            self.parts.append(bytes(mv))

    def _feed(self, mv: memoryview) -> None:
        pos, n = 0, len(mv)
        while pos < n:
            st = self.state
            if st == "head":
                self.acc += mv[pos:]
                pos = n
                k = self.acc.find(b"\r\n\r\n")
                if k < 0:
                    return
                rest = bytes(self.acc[k + 4 :])
                self._parse_head(bytes(self.acc[:k]))
                self.acc = bytearray()
                if rest:
                    self._feed(memoryview(rest))
                return
            if st == "len":
                take = min(self.remaining, n - pos)
                self._body(mv[pos : pos + take])
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self._done()
                    return
            elif st == "eof":
                self._body(mv[pos:])
                pos = n
            elif st == "chunk_size":
                self.acc += mv[pos:]
                pos = n
                k = self.acc.find(b"\r\n")
                if k < 0:
                    return
                size = int(bytes(self.acc[:k]).split(b";")[0], 16)
                rest = bytes(self.acc[k + 2 :])
                self.acc = bytearray()
                if size == 0:
                    self.state = "trailer"
                    self.acc += b"\r\n"  # so that an empty trailer section reads as "\r\n\r\n"
                else:
                    self.state, self.remaining = "chunk_data", size
                if rest:
                    self._feed(memoryview(rest))
                return
            elif st == "chunk_data":
                take = min(self.remaining, n - pos)
                self._body(mv[pos : pos + take])
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state, self.remaining = "chunk_crlf", 2
            elif st == "chunk_crlf":
                take = min(self.remaining, n - pos)
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = "chunk_size"
            elif st == "trailer":
                self.acc += mv[pos:]
                pos = n
                if self.acc.find(b"\r\n\r\n") >= 0:
                    self._done()
                return
            else:
                return

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        clen, chunked, close = -1, False, False
        for ln in lines[1:]:
            k, _, v = ln.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                clen = int(v)
            elif k == b"transfer-encoding":
                chunked = b"chunked" in v.lower()
            elif k == b"connection":
                close = b"close" in v.lower()
        if 100 <= status < 200:  # interim response: wait for the real one
            self.state = "head"
            return
        self.status, self.close_after = status, close
        if chunked:
            self.state = "chunk_size"
        elif clen > 0:
            self.state, self.remaining = "len", clen
        elif clen == 0:
            self.state = "len"
            self._done()
        else:
            self.state, self.close_after = "eof", True


class HttpConn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.proto: _Proto | None = None
        self.tr: asyncio.Transport | None = None
        self._host_hdr = f"Host: {host}:{port}\r\n".encode()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        tr, proto = await loop.create_connection(_Proto, self.host, self.port)
        sock = tr.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tr, self.proto = tr, proto  # type: ignore[assignment]

    def close(self) -> None:
        if self.tr is not None:
            self.tr.close()
        self.tr = self.proto = None

    async def request(
        self,
        method: str,
        path: str,
        headers: bytes = b"",
        body: bytes | Iterable[bytes] | None = None,
        body_len: int | None = None,
        keep_body: bool = True,
    ) -> Response:
        if self.proto is None or self.proto.closed:
            await self.connect()
        assert self.proto is not None and self.tr is not None
        if isinstance(body, bytes):
            chunks: Iterable[bytes] = (body,)
            n = len(body)
        elif body is None:
            chunks, n = (), 0
        else:
            chunks = body
            n = body_len if body_len is not None else -1
            if n < 0:
                chunks = list(body)
                n = sum(len(c) for c in chunks)
        head = (
            f"{method} {path} HTTP/1.1\r\n".encode()
            + self._host_hdr
            + b"Accept-Encoding: identity\r\n"
            + headers
            + (f"Content-Length: {n}\r\n".encode() if method in ("POST", "PUT") or n else b"")
            + b"\r\n"
        )
        proto, tr = self.proto, self.tr
        proto.keep = keep_body
        proto.waiter = asyncio.get_running_loop().create_future()
        try:
            tr.write(head)
            for c in chunks:
                tr.write(c)
                if not proto.can_write.is_set():
                    await _first(proto.can_write.wait(), proto.waiter)
            return await proto.waiter
        except (OSError, ValueError) as e:
            self.close()
            raise HttpError(f"{type(e).__name__}: {e}") from e
        finally:
            proto.waiter = None


async def _first(aw: Any, fut: asyncio.Future[Response]) -> None:
    """Wait for the write side to drain, or for the response (a server may answer early)."""
    t = asyncio.ensure_future(aw)
    await asyncio.wait([t, fut], return_when=asyncio.FIRST_COMPLETED)
    if not t.done():
        t.cancel()


def multipart(instances: list[bytes]) -> tuple[list[bytes], int]:
    part_head = b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n"
    chunks: list[bytes] = []
    for data in instances:
        chunks += (part_head, data, b"\r\n")
    chunks.append(b"--" + BOUNDARY + b"--\r\n")
    return chunks, sum(len(c) for c in chunks)


# --------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------


@dataclass
class Op:
    label: str
    method: str
    path: str
    headers: bytes
    body: list[bytes] | None = None
    body_len: int = 0
    instances: int = 0


class OpSource:
    """Hands out the next operation; shared by all connections of one process."""

    def __init__(self, job: dict[str, Any], worker_seed: int) -> None:
        self.job = job
        self.root: str = job["root"]
        self.rng = random.Random(worker_seed)
        self.kind = job["kind"]
        self.corpus = Corpus(CorpusSpec(**job["corpus"])) if job.get("corpus") else None
        self.cursor = int(job.get("start", 0))
        self.stop = int(job.get("stop", 0))
        self.batch = int(job.get("batch", 1))
        self.paths: dict[str, list[str]] = job.get("paths_by_label") or {"get": job.get("paths", [])}
        acc = job.get("accept_by_label") or {"get": job.get("accept", ACCEPT_JSON)}
        self.accept = {k: f"Accept: {v}\r\n".encode() for k, v in acc.items()}
        w: dict[str, float] = job.get("weights") or {"get": 1.0}
        self.labels = list(w)
        self.cum = []
        tot = 0.0
        for k in self.labels:
            tot += w[k]
            self.cum.append(tot)
        self.idx: dict[str, int] = {k: self.rng.randrange(max(1, len(v))) for k, v in self.paths.items()}

    def stow_op(self) -> Op | None:
        if self.corpus is None or self.cursor >= self.stop:
            return None
        a, b = self.cursor, min(self.cursor + self.batch, self.stop)
        self.cursor = b
        chunks, n = multipart([self.corpus.instance(i) for i in range(a, b)])
        hdr = f"Content-Type: {STOW_CT}\r\nAccept: application/dicom+json\r\n".encode()
        return Op("stow", "POST", self.root + "/studies", hdr, chunks, n, b - a)

    def next(self) -> Op | None:
        if self.kind == "stow":
            return self.stow_op()
        x = self.rng.random() * self.cum[-1]
        label = next(k for k, c in zip(self.labels, self.cum, strict=True) if x < c)
        if label == "stow":
            op = self.stow_op()
            if op is not None:
                return op
            label = next((k for k in self.labels if k != "stow"), "")
            if not label:
                return None
        ps = self.paths[label]
        i = self.idx[label]
        self.idx[label] = (i + 1) % len(ps)
        return Op(label, "GET", self.root + ps[i], self.accept.get(label, self.accept.get("get", b"")))


async def _run(job: dict[str, Any], proc_index: int) -> dict[str, Any]:
    conc = int(job["concurrency"])
    src = OpSource(job, job.get("seed", 1) * 1000 + proc_index)
    targets = [(str(h), int(p)) for h, p in job.get("targets") or [(job["host"], job["port"])]]
    first = int(job.get("conn_offset", 0))
    conns = [HttpConn(*targets[(first + k) % len(targets)]) for k in range(conc)]
    await asyncio.gather(*(c.connect() for c in conns))
    start_at = float(job.get("start_at", 0))
    delay = start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    warmup = float(job.get("warmup", 0))
    duration = float(job.get("duration", 1e9))
    max_ops = int(job.get("max_ops") or 0)
    keep_body = bool(job.get("keep_body", False))
    t0 = time.perf_counter()
    t_rec = t0 + warmup
    deadline = t_rec + duration
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    lat: dict[str, list[float]] = {}
    counts = {"ops": 0, "errors": 0, "sent": 0, "recv": 0, "instances": 0}
    status: dict[str, int] = {}
    err_sample: list[str] = []
    started = 0
    t_first: float | None = None
    t_last = t0

    async def worker(c: HttpConn) -> None:
        nonlocal started, t_first, t_last
        while True:
            now = time.perf_counter()
            if now >= deadline or (max_ops and started >= max_ops):
                return
            op = src.next()
            if op is None:
                return
            started += 1
            ts = time.perf_counter()
            try:
                resp = await c.request(op.method, op.path, op.headers, op.body, op.body_len, keep_body)
                st, nrecv = resp.status, resp.nbytes
                if st >= 300 and len(err_sample) < 5:
                    err_sample.append(f"{op.label} {op.path[:120]} -> {st}: {resp.body[:300]!r}")
            except HttpError as e:
                st, nrecv = 0, 0
                if len(err_sample) < 5:
                    err_sample.append(f"{op.label} {op.path[:120]} -> {e}")
            te = time.perf_counter()
            if ts < t_rec:
                continue
            if t_first is None:
                t_first = ts
            t_last = max(t_last, te)
            key = str(st)
            status[key] = status.get(key, 0) + 1
            if st == 0 or st >= 300:
                counts["errors"] += 1
                continue
            lat.setdefault(op.label, []).append(te - ts)
            counts["ops"] += 1
            counts["sent"] += op.body_len
            counts["recv"] += nrecv
            counts["instances"] += op.instances

    await asyncio.gather(*(worker(c) for c in conns))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for c in conns:
        c.close()
    return {
        **counts,
        "lat": lat,
        "status": status,
        "err_sample": err_sample,
        "wall": max(1e-9, t_last - (t_first if t_first is not None else t_rec)),
        "t_start": time.time() - (time.perf_counter() - (t_first or t_rec)),
        "cpu": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "cursor": src.cursor,
    }


def run_job(job: dict[str, Any], proc_index: int = 0) -> dict[str, Any]:
    """Entry point in a client process."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(_run(job, proc_index))
    return uvloop.run(_run(job, proc_index))


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        k: sum(r[k] for r in results) for k in ("ops", "errors", "sent", "recv", "instances")
    }
    out["cpu"] = sum(r["cpu"] for r in results)
    t_start = min(r["t_start"] for r in results)
    out["wall"] = max(r["t_start"] + r["wall"] for r in results) - t_start
    lat: dict[str, list[float]] = {}
    status: dict[str, int] = {}
    for r in results:
        for k, v in r["lat"].items():
            lat.setdefault(k, []).extend(v)
        for k, v in r["status"].items():
            status[k] = status.get(k, 0) + v
    out["lat"] = lat
    out["status"] = status
    out["err_sample"] = [e for r in results for e in r["err_sample"]][:5]
    out["cursor"] = max(r["cursor"] for r in results)
    return out


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


class Pool:
    """Persistent client processes (separate from the runner and from the servers)."""

    def __init__(self, procs: int) -> None:
        import concurrent.futures as cf
        import multiprocessing as mp

        self.procs = procs
        self.ex = cf.ProcessPoolExecutor(max_workers=procs, mp_context=mp.get_context("spawn"))
        # warm the workers: imports and templates
        list(self.ex.map(_warm, range(procs)))

    def run(self, job: dict[str, Any], procs: int = 1) -> dict[str, Any]:
        procs = max(1, min(procs, self.procs, int(job["concurrency"])))
        jobs = []
        conc = int(job["concurrency"])
        offset = 0
        for p in range(procs):
            j = dict(job)
            j["concurrency"] = conc // procs + (1 if p < conc % procs else 0)
            j["conn_offset"] = offset  # the round-robin over `targets` continues across processes
            offset += j["concurrency"]
            if job.get("max_ops"):
                j["max_ops"] = max(1, int(job["max_ops"]) // procs)
            if "start" in job and procs > 1:  # split the write range
                a, b = int(job["start"]), int(job["stop"])
                step = -(-(b - a) // procs)
                j["start"], j["stop"] = a + p * step, min(b, a + (p + 1) * step)
            jobs.append(j)
        start_at = time.time() + 0.3 + 0.1 * procs
        for j in jobs:
            j["start_at"] = start_at
        futs = [self.ex.submit(run_job, j, i) for i, j in enumerate(jobs)]
        res = merge([f.result() for f in futs])
        if procs > 1 and "start" in job:
            res["cursor"] = -1  # ranges split: caller must not assume a contiguous prefix
        return res

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ex.shutdown(wait=True, cancel_futures=True)


def _warm(i: int) -> int:
    from bench.corpus import template

    for s in ("ct128", "ct512", "tiny"):
        template(s)
    return i


def iter_chunks(data: bytes, total: int, chunk: int = 8 << 20) -> Iterator[bytes]:
    """Repeat `data` to produce `total` bytes in chunks (for the 2 GB instance)."""
    mv = memoryview(data)
    sent = 0
    while sent < total:
        n = min(chunk, total - sent, len(mv))
        yield bytes(mv[:n])
        sent += n
