"""A DICOM listener process: `dicomd serve` with `dicom_port` set runs ``dicom_listeners`` of them (one
per core by default: a listener's Python threads share one core), started (and restarted when one dies)
by the supervisor (server.py), which binds the port and hands the listening socket to each; the kernel
gives each connection to one of them. They count their associations together (association_count.py).

It holds what a web worker's lifespan holds for storing (an Index, an ObjectStore, a GroupCommitter and
the IngestService over them) on an asyncio loop in a thread of its own, and runs pynetdicom's association
server (dimse/transport.py) in another; the handlers run in pynetdicom's association threads, which run
their group commits too (``IngestService.commit_here``; the loop opens and closes the ingest). It stops
on SIGTERM or SIGINT: no new associations, those open get a few seconds to finish and are then aborted,
queued commits fail, the store and index close.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pynetdicom import AE, _config, evt

from dicomd.audit.dimse import DimseAudit
from dicomd.audit.sink import AuditSink
from dicomd.config import ConfigError, Settings
from dicomd.dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomd.dimse import command_set, direct_send, reactor
from dicomd.dimse.acceptance import CallerPolicy, check_association, note_accepted, note_rejected
from dicomd.dimse.association_count import AssociationCount
from dicomd.dimse.client import parse_address
from dicomd.dimse.commitment import CommitmentReporter, handle_n_action
from dicomd.dimse.context import Gateway
from dicomd.dimse.direct import DirectPath
from dicomd.dimse.direct_find import C_FIND_RQ, start_find
from dicomd.dimse.direct_retrieve import C_GET_RQ, C_MOVE_RQ, start_get, start_move
from dicomd.dimse.direct_store import C_STORE_RQ, start_store
from dicomd.dimse.negotiation import supported_contexts
from dicomd.dimse.operations import audited_operation, note_response
from dicomd.dimse.store import handle_echo, handle_store
from dicomd.dimse.transport import GatewayServer, Limits
from dicomd.startup import close_ingest, open_ingest
from dicomd.stop_signals import StopSignals

log = logging.getLogger("dicomd.dimse")

# on shutdown, open associations get this long to end before they are aborted
DRAIN_SECONDS = 10.0


def check_dimse_settings(settings: Settings) -> None:
    """Start-up check (ConfigError): TLS on the DICOM port needs the certificate files."""
    if settings.dicom_tls and not (settings.tls_cert_file and settings.tls_key_file):
        raise ConfigError("setting 'dicom_tls' needs 'tls_cert_file' and 'tls_key_file'")


def parse_peers(text: str) -> dict[str, tuple[str, int]]:
    """``dicom_peers`` (validated by config.py) as AE title -> (host, port)."""
    peers: dict[str, tuple[str, int]] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        title, _, address = entry.partition("=")
        peers[title.strip()] = parse_address(address)
    return peers


async def _open_gateway(settings: Settings) -> Gateway:
    # the supervisor migrated the index (migrate=False: a schema a newer replica migrated is refused)
    ingest = await open_ingest(settings, migrate=False)
    return Gateway(settings, ingest.committer.index, ingest.store, ingest, parse_peers(settings.dicom_peers))


async def _close_gateway(gateway: Gateway) -> None:
    await close_ingest(gateway.ingest)


@contextlib.contextmanager
def _event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="dicomd-dimse-loop", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if not thread.is_alive():
            loop.close()


def _handlers(
    gateway: Gateway,
    audit: DimseAudit,
    policy: CallerPolicy,
    reporter: CommitmentReporter,
    associations: AssociationCount,
) -> list[Any]:
    limit = gateway.settings.dicom_max_associations
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, check_association, [policy, audit, associations, limit]),
        (evt.EVT_ACCEPTED, note_accepted, [audit]),
        (evt.EVT_REJECTED, note_rejected, [audit]),
        (evt.EVT_DIMSE_SENT, note_response, [audit]),
        (evt.EVT_C_ECHO, handle_echo, [audit]),
        (evt.EVT_C_STORE, handle_store, [gateway, audit]),
        (evt.EVT_N_ACTION, handle_n_action, [gateway, reporter, audit]),
    ]
    # C-FIND, C-MOVE, C-GET (dimse/query.py, dimse/retrieve.py), each audited when answered
    from dicomd.dimse.query import handle_find
    from dicomd.dimse.retrieve import handle_get, handle_move

    operations: list[tuple[Any, Callable[..., Any], str]] = [
        (evt.EVT_C_FIND, handle_find, "C-FIND"),
        (evt.EVT_C_MOVE, handle_move, "C-MOVE"),
        (evt.EVT_C_GET, handle_get, "C-GET"),
    ]
    for event, handler, name in operations:
        handlers.append((event, audited_operation(handler, name, audit), [gateway]))
    return handlers


def application_entity(settings: Settings) -> AE:
    """The listener's AE: its limits and timeouts (also those of its C-MOVE associations)."""
    _config.LOG_HANDLER_LEVEL = "none"  # pynetdicom's standard handlers log identifiers (PHI) at debug
    # its service classes decode and format every request and response identifier for log lines that
    # its logger (at WARNING here) drops: ~10% of a C-FIND's CPU
    _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = False
    ae = AE(ae_title=settings.dicom_ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.maximum_associations = settings.dicom_max_associations
    ae.maximum_pdu_size = settings.dicom_max_pdu
    timeout = float(settings.dicom_timeout)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    for context in supported_contexts():  # (the supported_contexts setter would drop the roles)
        ae.add_supported_context(
            str(context.abstract_syntax),
            context.transfer_syntax,
            scu_role=context.scu_role,
            scp_role=context.scp_role,
        )
    return ae


def serve_dicom(
    listener: socket.socket,
    settings: Settings,
    stop: threading.Event,
    associations: AssociationCount | None = None,
) -> None:
    """Serve associations on ``listener`` until ``stop`` is set; ``associations`` counts them with the
    other listener processes' (for the association limit)."""
    from dicomd.http.tls import certificate_files

    check_dimse_settings(settings)
    reactor.install()  # pynetdicom's loops wait for work instead of sleeping 1 ms (dimse/reactor.py)
    command_set.install()  # command sets encoded without pydicom (dimse/command_set.py)
    direct_send.install()  # C-MOVE sub-operations of stored instances (dimse/direct_send.py)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its info lines are per association
    # pydicom warns of invalid values in identifiers with the value itself (PHI): errors only
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    target = settings.effective_audit_log
    sink = None if target.lower() == "off" else AuditSink(target)
    if sink is not None:
        sink.open()
    audit = DimseAudit(sink)
    try:
        with _event_loop() as loop:
            gateway = asyncio.run_coroutine_threadsafe(_open_gateway(settings), loop).result()
            try:
                _serve(
                    listener,
                    settings,
                    gateway,
                    audit,
                    stop,
                    certificate_files(settings) if settings.dicom_tls else None,
                    associations or AssociationCount.single(),
                )
            finally:
                asyncio.run_coroutine_threadsafe(_close_gateway(gateway), loop).result(30)
    finally:
        if sink is not None:
            sink.close()


def _serve(
    listener: socket.socket,
    settings: Settings,
    gateway: Gateway,
    audit: DimseAudit,
    stop: threading.Event,
    tls: Any,
    associations: AssociationCount,
) -> None:
    ae = application_entity(settings)
    host, port = listener.getsockname()[:2]
    limits = Limits(
        timeout=float(settings.dicom_timeout),
        max_pdu=settings.dicom_max_pdu,
        max_message=settings.max_request_bytes,
        max_connections=2 * settings.dicom_max_associations,
    )
    reporter = CommitmentReporter(gateway)
    reporter.start()
    server = ae.make_server(
        (host, port),
        evt_handlers=_handlers(gateway, audit, CallerPolicy.from_settings(settings), reporter, associations),
        server_class=GatewayServer,
        listener=listener,
        limits=limits,
        tls=tls,
        audit=audit,
        associations=associations,
        direct_path=functools.partial(
            DirectPath,
            gateway=gateway,
            audit=audit,
            starters={
                C_STORE_RQ: start_store,
                C_FIND_RQ: start_find,
                C_MOVE_RQ: start_move,
                C_GET_RQ: start_get,
            },
        ),
    )
    thread = threading.Thread(target=server.serve_forever, name="dicomd-dimse-accept", daemon=True)
    thread.start()
    log.info(
        "DICOM listener %s on %s:%d%s (process %d)",
        settings.dicom_ae_title,
        host,
        port,
        " (TLS)" if tls is not None else "",
        os.getpid(),
    )
    stop.wait()
    server.shutdown()  # no new associations
    deadline = time.monotonic() + DRAIN_SECONDS
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    for assoc in server.active_associations:
        with contextlib.suppress(Exception):
            assoc.abort()
    reporter.stop()
    log.info("DICOM listener stopped")


def run(listener: socket.socket, settings: Settings, associations: AssociationCount) -> None:
    """A listener process's main: serve until SIGTERM or SIGINT."""
    stop = threading.Event()
    StopSignals(stop)
    serve_dicom(listener, settings, stop, associations)
