"""The long-lived objects the handlers use, built once per worker by the lifespan (app.py) and reached
through ``services(request)``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from dicomd.api.response_cache import ResponseCache
from dicomd.config import Settings
from dicomd.index.store import Index
from dicomd.ingest.service import IngestService
from dicomd.jobs.cleanup import CleanupJob
from dicomd.jobs.sweep import OrphanSweep
from dicomd.pixels.service import PixelService
from dicomd.storage import ObjectStore


@dataclass(slots=True)
class Lifecycle:
    """Whether this worker should get traffic: not while it stops (draining its connections)."""

    draining: bool = False


# Starlette copies the lifespan's state into every request's scope["state"]
_STATE_KEY = "dicomd.services"


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    index: Index
    store: ObjectStore
    ingest: IngestService
    cleanup: CleanupJob  # woken after a delete, to remove the deleted objects once their grace is over
    metadata_cache: ResponseCache
    pixels: PixelService  # decode, encode and render off the event loop
    render_cache: ResponseCache  # rendered images and thumbnails
    sweep: OrphanSweep  # removes stored objects no index row names (one pass at a time across replicas)
    lifecycle: Lifecycle  # draining: /health/ready answers 503

    def lifespan_state(self) -> Mapping[str, Any]:
        """What the lifespan yields, so that ``services`` finds this object in each request."""
        return {_STATE_KEY: self}


def services(request: Request) -> Services:
    found: Services = request.scope["state"][_STATE_KEY]
    return found
