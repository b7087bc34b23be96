"""Interpreter settings of dicomd's busy processes: HTTP workers, DICOM listeners, the importer and its
parser processes. Process-wide, so each process's own entry point calls ``tune_for_throughput``; a
library function (``create_app``, ``import_files``) never does: tests build apps and import in-process."""

from __future__ import annotations

import gc
import sys

# Threads hand over the GIL after 1 ms instead of Python's 5: the event loop, a group committer or an
# import's commit thread waits less behind a parsing thread (docs/decisions.md).
SWITCH_INTERVAL = 0.001
# Ingest allocates many short-lived dicts (DICOM JSON, index rows) that reference counting frees; the
# default gen-0 threshold (700) runs the cycle collector thousands of times a second, and each full
# collection walks every object the process holds (an importer's pending batch included).
GC_THRESHOLDS = (50_000, 20, 20)


def tune_for_throughput() -> None:
    """Freeze the start-up heap (modules, settings: never garbage) out of the collector's walks, raise
    its thresholds and shorten the GIL switch interval."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL)
