"""C-MOVE and C-GET SCP (PS3.4 C.4.2, C.4.3): send the instances of patients, studies, series or
instances selected by their unique keys, as C-STORE sub-operations.

The selection runs through the QIDO machinery (index/qido.py) like C-FIND, so the unique keys are
validated as QIDO validates them; UID lists are allowed at every level. pynetdicom drives the
sub-operations: the handlers yield a pending status with each data set (read from the object store only
when its turn comes), and pynetdicom sends it, counts remaining/completed/failed/warning, answers the
pending responses and the final one (success; 0xB000 when some failed; 0xA702 when all did), and a
cancel (0xFE00 with the counts) the handler sees between sub-operations. A C-MOVE sub-operation of an
instance sent as stored goes out through dimse/direct_send.py (pynetdicom's ``send_c_store`` offers it
there first), not through pynetdicom's message path.

C-MOVE goes to an AE of the configured peers (dicom_peers; unknown or unreachable: 0xA801) over an
association that proposes, per SOP class, each stored syntax alone (so that a peer accepting it gets the
instance as stored) and one context of the conversions (q_syntax.py), plus Verification. An
instance the peer accepted no syntax for, or whose object cannot be read, is a failed sub-operation: its
reason is logged (UIDs of SOP classes and transfer syntaxes only: no PHI), its SOP Instance UID listed
in the final response's Failed SOP Instance UID List.

pynetdicom has no way to fail a C-MOVE before it associates with the destination: an identifier that
cannot be processed is answered, once the destination is known and reachable, with a failure status and
an ErrorComment (C-GET: at once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Any, cast

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import build_context, evt

from dicomd.dimse.client import tune_requested_socket as _tune_socket  # (the name tests wrap)
from dicomd.dimse.passthrough import data_set_of, stored_data_set
from dicomd.dimse.q_common import (
    CANCELLED,
    PENDING,
    QIDO_LEVEL,
    UNABLE_TO_PROCESS,
    IdentifierError,
    QueryLevel,
    element_text,
    failure_status,
    query_level,
    run_checked,
)
from dicomd.dimse.q_syntax import (
    choose_syntax,
    implicit_bytes,
    needs_pixel_work,
    prepare_for_syntax,
    sendable_syntaxes,
)
from dicomd.dimse.query import search_all
from dicomd.index.normalize import first_value
from dicomd.index.qido import MAX_LIMIT, QidoQuery, QueryError, parse_qido
from dicomd.index.schema import DEFAULT_PARTITION_KEY

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.dimse_primitives import C_MOVE
    from pynetdicom.events import Event
    from pynetdicom.presentation import PresentationContext

    from dicomd.dimse.context import Gateway
    from dicomd.index.store import Index
    from dicomd.index.types import StoredInstance

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
_REACTOR_RESUME_WAIT = 0.5  # seconds at most (a reactor thread starved of CPU that long is unusual)
UNABLE_TO_CALCULATE_MATCHES = 0xA701
# PS3.8 9.3.2.2: context IDs are the odd numbers 1-255; one is Verification's
MAX_PRESENTATION_CONTEXTS = 127
# the unique keys of each level (PS3.4 C.4.2.1.4.1); the lower levels' keys narrow, the level's selects
_PATIENT_ID, _STUDY_UID, _SERIES_UID, _SOP_UID = "00100020", "0020000D", "0020000E", "00080018"
_LEVEL_KEYS: dict[QueryLevel, tuple[str, ...]] = {
    "PATIENT": (_PATIENT_ID,),
    "STUDY": (_PATIENT_ID, _STUDY_UID),
    "SERIES": (_PATIENT_ID, _STUDY_UID, _SERIES_UID),
    "IMAGE": (_PATIENT_ID, _STUDY_UID, _SERIES_UID, _SOP_UID),
}
_KEYWORD = {
    _PATIENT_ID: "PatientID",
    _STUDY_UID: "StudyInstanceUID",
    _SERIES_UID: "SeriesInstanceUID",
    _SOP_UID: "SOPInstanceUID",
}


def _value(result: dict[str, Any], tag: str) -> str:
    return str(first_value(result.get(tag)) or "")


def _selection_query(identifier: Dataset, level: QueryLevel) -> QidoQuery:
    """The QIDO query of a retrieve identifier's unique keys (the level's own key is required)."""
    params: list[tuple[str, str]] = []
    keys = _LEVEL_KEYS[level]
    for tag in keys:
        elem = identifier.get(int(tag, 16))
        text = element_text(elem).strip() if elem is not None else ""
        if not text:
            if tag == keys[-1]:
                raise IdentifierError(UNABLE_TO_PROCESS, f"{_KEYWORD[tag]} is required at the {level} level")
            continue
        if "*" in text or "?" in text:
            raise IdentifierError(UNABLE_TO_PROCESS, f"{_KEYWORD[tag]} is a unique key: no wildcards")
        params.append((tag, text))
    try:
        query = parse_qido(QIDO_LEVEL[level], params, partition_key=DEFAULT_PARTITION_KEY)
    except QueryError as exc:
        raise IdentifierError(UNABLE_TO_PROCESS, str(exc).removeprefix("Invalid query parameter ")) from None
    query.limit = MAX_LIMIT
    return query


def select_instances(index: Index, query: QidoQuery, level: QueryLevel) -> list[StoredInstance]:
    """The stored instances a retrieve query names, study by study, in series/instance order."""
    # (study, series) -> the SOP Instance UIDs wanted there (None: all of them)
    wanted: dict[tuple[str, str | None], set[str] | None] = {}
    for result in search_all(index, query):
        study = _value(result, _STUDY_UID)
        if level in ("PATIENT", "STUDY"):
            wanted[(study, None)] = None
        elif level == "SERIES":
            wanted[(study, _value(result, _SERIES_UID))] = None
        else:
            sops = wanted.setdefault((study, _value(result, _SERIES_UID)), set())
            assert sops is not None
            sops.add(_value(result, _SOP_UID))
    instances: list[StoredInstance] = []
    for (study, series), sops in wanted.items():
        found = index.find_instances(DEFAULT_PARTITION_KEY, study, series)
        instances += found if sops is None else [i for i in found if i.sop_instance_uid in sops]
    return instances


def storage_contexts(instances: list[StoredInstance]) -> list[PresentationContext]:
    """Presentation contexts to send `instances`: per SOP class, one per stored syntax alone (a peer's
    choice among several syntaxes of one context is its own preference, and the stored one is
    preferred) and one with the conversions; one per SOP class with every syntax when that would be too
    many contexts (Verification's aside, at most 127)."""
    stored = dict.fromkeys((i.sop_class_uid, i.transfer_syntax_uid) for i in instances)
    conversions: dict[str, dict[str, None]] = {}
    for sop, ts in stored:
        conversions.setdefault(sop, {}).update(dict.fromkeys(sendable_syntaxes(ts)[1:]))
    contexts = [build_context(sop, [ts]) for sop, ts in stored]
    contexts += [build_context(sop, list(syntaxes)) for sop, syntaxes in conversions.items() if syntaxes]
    if len(contexts) <= MAX_PRESENTATION_CONTEXTS:
        return contexts
    merged: dict[str, dict[str, None]] = {}
    for sop, ts in stored:
        merged.setdefault(sop, {}).update(dict.fromkeys(sendable_syntaxes(ts)))
    return [build_context(sop, list(ts)) for sop, ts in list(merged.items())[:MAX_PRESENTATION_CONTEXTS]]


def accepted_syntaxes(assoc: Association) -> dict[str, set[str]]:
    """SOP class -> the syntaxes this side may send C-STORE requests in on `assoc`."""
    accepted: dict[str, set[str]] = {}
    for cx in assoc.accepted_contexts:
        if cx.as_scu and cx.abstract_syntax:
            accepted.setdefault(str(cx.abstract_syntax), set()).update(str(t) for t in cx.transfer_syntax)
    return accepted


def _failed_marker(instance: StoredInstance) -> Dataset:
    """A data set pynetdicom will count as a failed sub-operation, with its SOP Instance UID in the
    Failed SOP Instance UID List: without file meta it has no transfer syntax to send in."""
    ds = Dataset()
    ds.SOPClassUID = instance.sop_class_uid
    ds.SOPInstanceUID = instance.sop_instance_uid
    return ds


def load_for_sending(
    gateway: Gateway, instance: StoredInstance, accepted: dict[str, set[str]], op: str
) -> Dataset:
    """The instance's data set ready for a C-STORE the peer accepts, or a failed marker (reason logged):
    as stored, or with its element headers rewritten (explicit to implicit VR little endian), both as a
    ``StoredDataSet`` of bytes to send unchanged; else converted by pydicom or the pixel services."""
    stored = instance.transfer_syntax_uid
    target = choose_syntax(stored, accepted.get(instance.sop_class_uid, ()))
    if target is None:
        log_no_context(instance, op)
        return _failed_marker(instance)
    if needs_pixel_work(stored, target):
        return _transcoded(gateway, instance, target, op)
    data = read_stored(gateway, instance, op)
    if data is None:
        return _failed_marker(instance)
    uids = (instance.sop_class_uid, instance.sop_instance_uid)
    try:
        if target == stored:  # sent as stored: no decoding, no re-encoding (dimse/passthrough.py)
            return stored_data_set(data, *uids, stored)
        rewritten = implicit_bytes(stored, target, data_set_of(data))  # only the headers change
        if rewritten is not None:
            return stored_data_set(rewritten, *uids, target, whole=False)
        ds = dcmread(BytesIO(data))
        return prepare_for_syntax(ds, stored, target)
    except Exception as exc:
        log_unparsable(exc, op)
        return _failed_marker(instance)


def is_failed_marker(ds: Dataset) -> bool:
    """Whether ``load_for_sending`` gave a failed marker (a data set without a syntax to send in)."""
    return "TransferSyntaxUID" not in getattr(ds, "file_meta", ())


def log_no_context(instance: StoredInstance, op: str) -> None:
    log.warning(
        "%s: sub-operation failed: no accepted presentation context for SOP class %s in %s",
        op,
        instance.sop_class_uid,
        " or ".join(sendable_syntaxes(instance.transfer_syntax_uid)),
    )


def log_unparsable(exc: Exception, op: str) -> None:
    log.warning("%s: sub-operation failed: the stored file could not be parsed (%s)", op, type(exc).__name__)


def read_stored(gateway: Gateway, instance: StoredInstance, op: str) -> bytes | None:
    """The instance's stored Part 10 file; None when it cannot be read (deleted meanwhile, or the store
    failed: reason logged)."""
    try:
        return gateway.store.read(instance.object_key)
    except Exception as exc:
        log.warning(
            "%s: sub-operation failed: the stored object could not be read (%s)", op, type(exc).__name__
        )
        return None


def _transcoded(gateway: Gateway, instance: StoredInstance, target: str, op: str) -> Dataset:
    """The instance transcoded to `target` by the pixel services (q_syntax.py), or a failed marker."""
    from dicomd.pixels import transcode

    try:
        plan = transcode.plan(gateway.store, instance, target, gateway.settings.pixel_memory_limit)
        data = b"".join(transcode.part10_chunks(gateway.store, plan))
        return dcmread(BytesIO(data))
    except Exception as exc:  # a codec, a limit or the store failed: that sub-operation only
        log.warning(
            "%s: sub-operation failed: transcoding %s to %s failed (%s)",
            op,
            instance.transfer_syntax_uid,
            target,
            type(exc).__name__,
        )
        return _failed_marker(instance)


@dataclass
class Selection:
    """The instances a retrieve identifier selects, or why it cannot be processed."""

    instances: list[StoredInstance] = field(default_factory=list)
    error: IdentifierError | None = None


def select(identifier_of: Callable[[], Dataset], sop_class: str, gateway: Gateway) -> Selection:
    """The selection of a retrieve request's identifier (decoded when first asked for) under the
    information model ``sop_class``."""
    try:
        identifier = run_checked(identifier_of, "identifier")
        level: QueryLevel = run_checked(lambda: query_level(identifier, sop_class), "identifier")
        query: QidoQuery = run_checked(lambda: _selection_query(identifier, level), "identifier")
    except IdentifierError as exc:
        return Selection(error=exc)
    try:
        return Selection(select_instances(gateway.index, query, level))
    except Exception as exc:  # the index failed: the peer gets a status, the log no PHI
        log.error("retrieve: the index search failed (%s)", type(exc).__name__)
        return Selection(
            error=IdentifierError(UNABLE_TO_CALCULATE_MATCHES, "the index could not be searched")
        )


def _select(event: Event, gateway: Gateway) -> Selection:
    return select(lambda: event.identifier, str(event.request.AffectedSOPClassUID or ""), gateway)


def _sub_operations(
    event: Event,
    gateway: Gateway,
    selection: Selection,
    accepted: dict[str, set[str]],
    op: str,
    before_send: Callable[[], None] = lambda: None,
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """After the number of sub-operations: a pending status and data set per instance, or the identifier's
    failure; a cancel stops between sub-operations (pynetdicom answers it with the counts)."""
    if selection.error is not None:
        yield failure_status(selection.error.status, selection.error.comment), None
        return
    for instance in selection.instances:
        if event.is_cancelled:
            yield CANCELLED, None
            return
        ds = load_for_sending(gateway, instance, accepted, op)
        before_send()
        yield PENDING, ds


def reactor_resumed(assoc: Association) -> Callable[[], None]:
    """A wait until `assoc`'s reactor has resumed after the previous C-STORE (pynetdicom 3.0.4 internals).

    send_c_store pauses the association's reactor thread so that it cannot take the C-STORE response, and
    resumes it at the end; it tells a paused reactor by a flag that stays set until the reactor thread
    runs again. Called again before that thread has run, it takes the stale flag for a pause, and the
    reactor may then take the next response as an unexpected message: that sub-operation waits for the
    DIMSE timeout and the rest of the move fails (seen in about 1 move of 40 to a fast peer)."""

    def wait() -> None:
        deadline = time.monotonic() + _REACTOR_RESUME_WAIT
        while getattr(assoc, "_is_paused", False) and assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.0001)

    return wait


def handle_move(event: Event, gateway: Gateway) -> Iterator[Any]:
    """pynetdicom EVT_C_MOVE handler: the destination (address, port, association arguments), the number
    of sub-operations, then (status, data set) pairs."""
    destination = str(cast("C_MOVE", event.request).MoveDestination or "").strip()
    peer = gateway.peers.get(destination)
    if peer is None:
        log.warning("C-MOVE refused: the destination AE is not a configured peer")
        yield None, None  # pynetdicom answers 0xA801, move destination unknown
        return
    selection = _select(event, gateway)
    # the store association, captured when the destination accepts it: its accepted contexts decide
    # each instance's syntax
    store_assoc: list[Association] = []
    requestor = str(event.assoc.requestor.ae_title).strip()

    def on_accepted(accepted_event: Event) -> None:
        store_assoc.append(accepted_event.assoc)
        # each sub-operation names the AE that asked for the move (PS3.7 9.3.1.1), not this one
        accepted_event.assoc.move_originator = requestor  # type: ignore[attr-defined]

    handlers = [(evt.EVT_CONN_OPEN, _tune_socket), (evt.EVT_ACCEPTED, on_accepted)]
    # Verification too: the association stands when the peer accepts none of the storage contexts (each
    # instance then fails: 0xA702, not 0xA801), and carries an identifier's failure (module docstring)
    contexts = [build_context(VERIFICATION), *storage_contexts(selection.instances)]
    host, port = peer
    yield host, port, {"contexts": contexts, "evt_handlers": handlers}
    yield 1 if selection.error is not None else len(selection.instances)
    if not store_assoc:  # not reached: pynetdicom answers 0xA801 when the destination does not accept
        yield from _sub_operations(event, gateway, selection, {}, "C-MOVE")
        return
    accepted = accepted_syntaxes(store_assoc[0])
    yield from _sub_operations(
        event, gateway, selection, accepted, "C-MOVE", before_send=reactor_resumed(store_assoc[0])
    )


def handle_get(event: Event, gateway: Gateway) -> Iterator[Any]:
    """pynetdicom EVT_C_GET handler: the number of sub-operations, then (status, data set) pairs sent on
    the requesting association (the SCU proposed the storage contexts, with the SCP role)."""
    selection = _select(event, gateway)
    yield 1 if selection.error is not None else len(selection.instances)
    accepted = accepted_syntaxes(event.assoc)
    yield from _sub_operations(event, gateway, selection, accepted, "C-GET")
