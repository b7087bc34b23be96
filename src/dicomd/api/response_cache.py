"""Per-worker caches of assembled responses: WADO-RS metadata, rendered images and thumbnails."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class ResponseCache:
    """Assembled responses of one worker, least recently used first out, bounded in bytes.

    Metadata responses are keyed by ETag (which names every stored version in the response, so a changed
    study never hits a stale entry) and base URL (BulkDataURIs are absolute). Viewers fetch the same
    study's metadata again and again; this turns those requests into one index query. Rendered images are
    keyed by object key, frame and rendering parameters."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()
        self._size = 0

    def get(self, key: Hashable) -> bytes | None:
        body = self._entries.get(key)
        if body is not None:
            self._entries.move_to_end(key)
        return body

    def put(self, key: Hashable, body: bytes) -> None:
        if len(body) > self.max_bytes // 4 or key in self._entries:
            return
        self._entries[key] = body
        self._size += len(body)
        while self._size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._size -= len(old)
