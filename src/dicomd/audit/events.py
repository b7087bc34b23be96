"""The audit vocabulary (DICOM PS3.15 Annex A.5) and what handlers add to a request's audit event.

A handler reports what it did with ``annotate(request, **facts)``; the audit middleware
(audit/middleware.py) puts an empty dict on the scope before the request and writes the facts with the
event after the response. Without the middleware (audit off) ``annotate`` does nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from starlette.requests import Request
from starlette.types import Scope

AUDIT_SCOPE_KEY = "dicomd.audit"

# PS3.15 A.5.3 EventActionCode: Create, Read, Update, Delete, Execute
ActionCode = Literal["C", "R", "U", "D", "E"]

# PS3.15 A.5.3 EventOutcomeIndicator
OUTCOME_SUCCESS = 0
OUTCOME_MINOR_FAILURE = 4  # e.g. a STOW with some instances failed (202), a retrieve cut short
OUTCOME_SERIOUS_FAILURE = 8  # the request was refused (4xx) or abandoned before an answer
OUTCOME_MAJOR_FAILURE = 12  # the server failed (5xx)


@dataclass(frozen=True, slots=True)
class EventId:
    """A PS3.16 coded concept from the DCM scheme (PS3.15 A.5.3 EventID)."""

    code: str
    display: str

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "scheme": "DCM", "display": self.display}


INSTANCES_ACCESSED = EventId("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = EventId("110104", "DICOM Instances Transferred")
STUDY_DELETED = EventId("110105", "DICOM Study Deleted")
IMPORT = EventId("110107", "Import")
QUERY = EventId("110112", "Query")

# Route names (api/routes.py) that are audited, by the part before the dot, with exceptions by full name.
_BY_RESOURCE: dict[str, tuple[EventId, ActionCode]] = {
    "stow": (IMPORT, "C"),
    "qido": (QUERY, "E"),
    "changefeed": (QUERY, "E"),  # lists UIDs of what changed
    "wado": (INSTANCES_ACCESSED, "R"),
    "rendered": (INSTANCES_ACCESSED, "R"),  # rendered images and thumbnails show an instance's pixels
    "wado_uri": (INSTANCES_ACCESSED, "R"),  # its UIDs are in the query: the handler reports them
    "delete": (STUDY_DELETED, "D"),
}
_BY_ROUTE: dict[str, tuple[EventId, ActionCode]] = {
    # these send DICOM objects (or their pixel / bulk data) to the client
    "wado.retrieve_study": (INSTANCES_TRANSFERRED, "R"),
    "wado.retrieve_series": (INSTANCES_TRANSFERRED, "R"),
    "wado.retrieve_instance": (INSTANCES_TRANSFERRED, "R"),
    "wado.retrieve_bulkdata": (INSTANCES_TRANSFERRED, "R"),
    "wado.retrieve_frames": (INSTANCES_TRANSFERRED, "R"),
}
# Versioned routes that touch no PHI and are not audited.
UNAUDITED_ROUTES = frozenset({"openapi.document", "partitions.list"})


def event_of_route(name: str) -> tuple[EventId, ActionCode] | None:
    """The event and action of a versioned route; None for a route that is not audited."""
    if name in UNAUDITED_ROUTES:
        return None
    return _BY_ROUTE.get(name) or _BY_RESOURCE.get(name.partition(".")[0], (INSTANCES_ACCESSED, "R"))


def event_of_method(method: str) -> tuple[EventId, ActionCode]:
    """The event of a request that matched no route (refused before routing, or a wrong method/path):
    what the method attempted."""
    if method == "DELETE":
        return STUDY_DELETED, "D"
    if method == "POST":
        return IMPORT, "C"
    if method == "PUT":
        return IMPORT, "U"
    return INSTANCES_ACCESSED, "R"


def outcome_indicator(status: int | None, *, completed: bool, failed: bool) -> int:
    """The PS3.15 outcome of a request: ``status`` the HTTP status sent (None: none was), ``completed``
    whether the whole response was sent, ``failed`` whether the application raised."""
    if failed or (status is not None and status >= 500):
        return OUTCOME_MAJOR_FAILURE
    if status is None or status >= 400:
        return OUTCOME_SERIOUS_FAILURE
    if not completed or status == 202:
        return OUTCOME_MINOR_FAILURE
    return OUTCOME_SUCCESS


def audit_facts(scope: Scope) -> dict[str, Any] | None:
    """The facts handlers reported for this request; None when it is not audited."""
    found: dict[str, Any] | None = scope.get(AUDIT_SCOPE_KEY)
    return found


def annotate(request: Request, **facts: Any) -> None:
    """Adds ``facts`` (JSON-serialisable values) to the request's audit event; a later value of the same
    name replaces an earlier one."""
    found = audit_facts(request.scope)
    if found is not None:
        found.update(facts)


def instance_reference(
    study: str, series: str, sop_instance: str, sop_class: str, **more: Any
) -> dict[str, Any]:
    """How an instance is named in an event (PS3.15 ParticipantObject of a study, with its SOP class)."""
    return {"study": study, "series": series, "instance": sop_instance, "sop_class": sop_class, **more}
