"""What `dicomd import` shows while it runs: a progress bar on a terminal (rich), a log line every few
seconds otherwise (a service's journal, CI, a file), both read from the ImportReport the import updates."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from types import TracebackType
from typing import TextIO

from dicomd.ingest.bulk_import import ImportReport

_WINDOW = 30.0  # seconds of history behind the current rate (and so the ETA)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class _Rate:
    """Files per second over the last _WINDOW seconds."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, now: float, done: int) -> float:
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > _WINDOW:
            self._samples.popleft()
        t0, d0 = self._samples[0]
        return (done - d0) / (now - t0) if now > t0 else 0.0


def summary_counts(report: ImportReport) -> str:
    already = report.already_stored + report.skipped
    skipped = f" ({report.skipped} skipped unread: imported before, unchanged)" if report.skipped else ""
    return f"stored {report.stored}, already stored {already}{skipped}, failed {len(report.failed)}"


def _eta(report: ImportReport, rate: float) -> str:
    """The ETA (e.g. ETA 1m05s) once the total is known and files are moving, else nothing."""
    if not report.counted or rate <= 0:
        return ""
    return f"ETA {_duration(max(0, report.found - report.done) / rate)}"


def status_line(report: ImportReport, rate: float) -> str:
    done, found = report.done, report.found
    total = f"{done} of {found} files" if report.counted else f"{done} files ({found}+ found)"
    eta = _eta(report, rate)
    return f"import: {total}: {summary_counts(report)}; {rate:.0f} files/s{', ' + eta if eta else ''}"


class ImportProgress:
    """Shows `report` until the block ends: a rich progress bar when `out` is a terminal, else a line
    every `every` seconds."""

    def __init__(self, report: ImportReport, *, out: TextIO | None = None, every: float = 5.0) -> None:
        self._report = report
        self._out = out or sys.stderr
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="import-progress", daemon=True)
        self._interactive = self._out.isatty()

    def __enter__(self) -> ImportProgress:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        if self._interactive:
            self._run_bar()
        else:
            self._run_lines()

    def _run_lines(self) -> None:
        rate = _Rate()
        rate.update(time.monotonic(), self._report.done)  # the first line's rate is since the start (not 0)
        while not self._stop.wait(self._every):
            now = time.monotonic()
            line = status_line(self._report, rate.update(now, self._report.done))
            print(line, file=self._out, flush=True)

    def _run_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        report, rate = self._report, _Rate()
        rate.update(time.monotonic(), report.done)
        columns = (
            TextColumn("import"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
        )
        console = Console(file=self._out)
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("import", total=None, counts="", speed="", eta="")
            while True:
                stopping = self._stop.wait(0.25)
                per_second = rate.update(time.monotonic(), report.done)
                bar.update(
                    task,
                    completed=report.done,
                    total=report.found if report.counted else None,
                    counts=summary_counts(report),
                    speed=f"{per_second:.0f}/s",
                    eta=_eta(report, per_second),
                )
                if stopping:
                    return
