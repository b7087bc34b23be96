"""Records an audit event for every request to the versioned API once its response has been sent.

The event (one JSON line, see docs) says who (the principal authentication set), when, from where, what
(the route's PS3.15 event and action, the partition, the UIDs in the path, the query, what the handler
reported through ``audit.events.annotate``) and how it ended (PS3.15 outcome and HTTP status). Every
versioned request also gets an ``X-Request-ID`` (the client's, when it looks sane, else a new one), which
the operational log lines of the request carry too (logs.py) and the event names.

Fail-closed: while the audit trail cannot be written (audit/sink.py), versioned requests get 503."""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import socket
import time
import unicodedata
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomd import logs
from dicomd.api.common import error_response
from dicomd.api.partitions import resolved_partition_name
from dicomd.api.routes import VERSIONED
from dicomd.audit.events import (
    AUDIT_SCOPE_KEY,
    event_of_method,
    event_of_route,
    outcome_indicator,
)
from dicomd.audit.sink import AuditSink
from dicomd.auth.principal import principal_of
from dicomd.config import Settings

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID = 128
_SANE_REQUEST_ID = re.compile(rf"[A-Za-z0-9._~:@/+=-]{{1,{MAX_REQUEST_ID}}}")
CLIENT_AUDIT_PREFIXES = (b"x-ms-azuredicom-audit-", b"x-dicomd-audit-")
UID_PARAMS = ("study", "series", "instance")

# /v{n}/... and, when partitions come from the URL, /v{n}/partitions/{name}/...
_VERSIONED_PATH = re.compile(r"/v([^/]*)(/partitions/([^/]+))?(/.*)?")
_AUDIT_SOURCE = socket.gethostname()


def audited(app: ASGIApp, settings: Settings) -> ASGIApp:
    """``app`` with its versioned requests audited to ``settings.effective_audit_log`` (a file, "-" for
    standard output, "off": no events, though requests still get their X-Request-ID)."""
    target = settings.effective_audit_log
    sink = None if target.lower() == "off" else AuditSink(target)
    return AuditMiddleware(app, sink, settings.audit_header_bytes)


class AuditMiddleware:
    """One per application (per worker process): its sink is opened and closed with the lifespan."""

    def __init__(self, app: ASGIApp, sink: AuditSink | None, header_bytes: int) -> None:
        self.app = app
        self.sink = sink
        self.header_bytes = header_bytes
        # the route table again, to name what a request refused before routing (a 401) was after
        self._routes = [(endpoint.name, endpoint.route()) for endpoint in VERSIONED]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path_match = _VERSIONED_PATH.fullmatch(scope["path"])
        if path_match is None:
            await self.app(scope, receive, send)
            return
        await self._request(scope, receive, send, path_match)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Opens the sink when the lifespan has started (a file that cannot be opened fails the start-up:
        Starlette reports the error and runs the lifespan's clean-up) and closes it, writing what is
        queued, after the lifespan's shutdown."""

        async def send_after(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete" and self.sink is not None:
                try:
                    self.sink.open()
                except OSError as exc:
                    raise RuntimeError(
                        f"the audit log {self.sink.target} cannot be opened: {exc.strerror}"
                    ) from None
            elif message["type"].startswith("lifespan.shutdown.") and self.sink is not None:
                self.sink.close()
            await send(message)

        await self.app(scope, receive, send_after)

    async def _request(self, scope: Scope, receive: Receive, send: Send, path_match: re.Match[str]) -> None:
        # the operational log carries only the server's own id (a client's id is text it chose: it could
        # hold PHI); the audit event carries both, so an operator can join the two
        server_id = _new_request_id()
        client_id = _client_request_id(scope)
        request_id = client_id or server_id
        id_header = (REQUEST_ID_HEADER, request_id.encode())
        token = logs.request_id.set(server_id)
        started = time.time()
        status: int | None = None
        sent_bytes = 0
        completed = failed = False

        async def send_audited(message: Message) -> None:
            nonlocal status, sent_bytes, completed
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), id_header]
                await send(message)
                status = message["status"]
                return
            await send(message)  # raises when the client has gone: then this part was not sent
            if message["type"] == "http.response.body":
                sent_bytes += len(message.get("body", b""))
                completed = not message.get("more_body", False)

        facts: dict[str, Any] = {}
        if self.sink is not None:
            scope[AUDIT_SCOPE_KEY] = facts
        try:
            if self.sink is not None and self.sink.failing:
                refusal = error_response(
                    503, "the audit trail cannot be written; try again later", {"retry-after": "5"}
                )
                await refusal(scope, receive, send_audited)
            else:
                await self.app(scope, receive, send_audited)
        except Exception:
            failed = True  # Starlette's outermost middleware answers 500
            raise
        finally:
            logs.request_id.reset(token)
            if self.sink is not None:
                try:
                    event = self._event(
                        facts, scope, path_match, request_id, started, status, completed, failed
                    )
                    if event is not None:
                        event["log_request_id"] = server_id
                        event["response_bytes"] = sent_bytes
                        event.update(facts)
                        self.sink.write(orjson.dumps(event, default=str) + b"\n")
                except Exception as exc:  # a bug here must not hide the request's own outcome
                    log.error("an audit event could not be built (%s)", type(exc).__name__)

    def _event(
        self,
        facts: dict[str, Any],
        scope: Scope,
        path_match: re.Match[str],
        request_id: str,
        started: float,
        status: int | None,
        completed: bool,
        failed: bool,
    ) -> dict[str, Any] | None:
        route_name, path_params = self._route(scope, path_match)
        if route_name is None:
            event_id, action = event_of_method(scope["method"])
        else:
            found = event_of_route(route_name)
            if found is None:
                return None
            event_id, action = found
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(started, UTC).isoformat(timespec="microseconds"),
            "event_id": event_id.as_json(),
            "action": action,
            "outcome": outcome_indicator(status, completed=completed, failed=failed),
            "status": 500 if failed and status is None else status,
            "completed": completed,
            "duration_ms": round((time.time() - started) * 1000, 3),
            "request_id": request_id,
            "who": _who(scope),
            "client": _client(scope),
            "source": _AUDIT_SOURCE,
            "worker": os.getpid(),
            "method": scope["method"],
            "route": route_name,
            "partition": _partition(scope, path_match),
        }
        for name in UID_PARAMS:
            if name in path_params:
                event[name] = str(path_params[name])
        query = scope.get("query_string", b"")
        if query and "query" not in facts:  # a search's handler reports the parameters it parsed
            event["query"] = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        client_audit = _client_audit_headers(scope, self.header_bytes)
        if client_audit is not None:
            event["client_audit"] = client_audit
        return event

    def _route(self, scope: Scope, path_match: re.Match[str]) -> tuple[str | None, dict[str, Any]]:
        """The name of the versioned route that ran and its path parameters; for a request answered
        before routing (wrong version, no credentials) the route its path and method match, if any."""
        route = scope.get("route")
        # a route of an ASGI app (the partition list) has no methods of its own: it takes any
        if (
            isinstance(route, Route)
            and route.name
            and (route.methods is None or scope["method"] in route.methods)
        ):
            return route.name, dict(scope.get("path_params", {}))
        path = path_match.group(4) or "/"
        inner = {"type": "http", "path": path, "root_path": "", "method": scope["method"]}
        params: dict[str, Any] = {}
        for name, candidate in self._routes:
            match, child = candidate.matches(inner)
            if match is Match.FULL:
                return name, child["path_params"]
            if match is Match.PARTIAL and not params:
                params = child["path_params"]  # a wrong method: no route, but the UIDs it named
        return None, params


def _client_request_id(scope: Scope) -> str | None:
    """The client's X-Request-ID when it looks like an id, else None (the server's is used)."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            text = value.decode("latin-1")
            return text if _SANE_REQUEST_ID.fullmatch(text) else None
    return None


class _RequestIds:
    """Unique ids without a system call each: 16 random hex digits per process, then a counter."""

    def __init__(self) -> None:
        self.prefix = ""
        self.pid = 0
        self.count = itertools.count()

    def __call__(self) -> str:
        if self.pid != os.getpid():  # a new process (workers fork): new random digits
            self.prefix, self.pid, self.count = secrets.token_hex(8), os.getpid(), itertools.count()
        return f"{self.prefix}{next(self.count):016x}"


_new_request_id = _RequestIds()


def _who(scope: Scope) -> dict[str, Any] | None:
    principal = principal_of(scope)
    if principal is None:
        return None
    who: dict[str, Any] = {"subject": principal.subject, "method": principal.method}
    if principal.name:
        who["name"] = principal.name
    return who


def _client(scope: Scope) -> dict[str, Any] | None:
    client = scope.get("client")
    if not client:
        return None
    return {"address": client[0], "port": client[1]}


def _partition(scope: Scope, path_match: re.Match[str]) -> str | None:
    """The partition's name: from the URL (/partitions/{name}/...), else the default one once resolved;
    None when the request was refused before (no partition named, none resolved)."""
    named: str | None = path_match.group(3)
    return named if named is not None else resolved_partition_name(scope)


def _client_audit_headers(scope: Scope, budget: int) -> dict[str, Any] | None:
    """The client-supplied audit headers, control characters stripped, values and their total (names
    included) cut to ``budget`` bytes of UTF-8; None when there are none."""
    kept: dict[str, str] = {}
    truncated = False
    left = budget
    for raw_name, raw_value in scope["headers"]:
        if not raw_name.startswith(CLIENT_AUDIT_PREFIXES):
            continue
        name = _printable(raw_name.decode("latin-1"))
        value = _printable(raw_value.decode("utf-8", errors="replace"))
        room = left - len(name.encode())
        if room <= 0:
            truncated = True
            continue
        if name in kept:  # a repeated header: its values joined as HTTP does
            room -= 1
            cut = _cut(value, room)
            kept[name] += "," + cut
        else:
            cut = _cut(value, room)
            kept[name] = cut
        truncated = truncated or len(cut) < len(value)
        left = room - len(cut.encode())
    if not kept and not truncated:
        return None
    found: dict[str, Any] = {"headers": kept}
    if truncated:
        found["truncated"] = True
    return found


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c for c in text if c == " " or unicodedata.category(c)[0] != "C")


def _cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, on a character boundary."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode(errors="ignore")
