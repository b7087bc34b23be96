"""Rendering of benchmark results: the Markdown report (tables, ratios, summaries), the results files
and the README's copy of the latest report. Nothing here measures; ``bench/run.py`` does, and hands its
``Line``s over (or ``load`` reads them back from a results .json, for ``--render``)."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
README = BENCH / "README.md"


@dataclass
class Line:
    """One measured line of one server: a row of the report (the servers side by side)."""

    key: str
    title: str
    unit: str  # unit of `value`
    value: float
    mb_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    srv_cpu: float = 0.0  # % of one core (200 = both cores of a 2-core machine)
    cli_cpu: float = 0.0
    cli_us: float = 0.0  # client CPU microseconds per request
    ops: int = 0
    errors: int = 0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _ratio(r: float) -> str:
    """Two significant digits, never in exponent form (102, not 1e+02)."""
    return f"{r:.2g}" if r < 100 else f"{r:.0f}"


def _f(x: float | None, digits: int = 1) -> str:
    if x is None or x != x:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _bound(ln: Line, cores: int) -> str:
    if ln.unit == "MB":
        return "-"
    total = ln.srv_cpu + ln.cli_cpu
    if ln.errors and not ln.ops:
        return "errors"
    by_pid: dict[str, float] = ln.extra.get("srv_cpu_by_pid", {})
    worst = max(by_pid.values(), default=0.0)
    if ln.srv_cpu >= 85 * cores:
        return "server CPU"
    if total >= 90 * cores:
        return "CPU (server+client)"
    if len(by_pid) > 1 and worst >= 85 and worst >= 0.8 * ln.srv_cpu:
        return "1 worker saturated, others idle"
    if 85 <= ln.srv_cpu <= 115:
        return "~1 core busy (serialized?)"
    if ln.key.startswith("stow"):
        return "latency/fsync?"
    return "latency"


def render(
    mode: str,
    results: dict[str, dict[str, Line]],
    infos: dict[str, dict[str, Any]],
    meta: dict[str, Any],
    cores: int | None = None,
) -> str:
    """The Markdown report of a run. ``cores`` (default: this machine's) is what the "bound" column's
    guess compares CPU use with; pass the measuring machine's when rendering elsewhere."""
    cores = cores or os.cpu_count() or 1
    names = list(results)
    out = [f"# dicomd benchmark, {mode} mode: {meta['date']}", ""]
    out += ["| machine | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in meta["machine"].items()]
    out += [
        f"| fsync rate (create+write 39 KB+fsync, after the servers) | {meta['fsync_per_s']:,.0f} files/s |",
        f"| loopback, 1 TCP stream (Python) | {meta['loopback_mb_s']:,.0f} MB/s |",
    ]
    out += [f"| {n} | {meta['versions'].get(n, '?')} |" for n in names]
    out += [f"| client | {meta['client']} |"]
    cal = meta.get("client_ceiling")
    if cal:
        out.append(
            f"| client ceiling, 1 process vs null server | {cal['small_req_s']:,.0f} req/s at "
            f"{cal['small_us_req']:.0f} us CPU/req (300 B answers); {cal['large_mb_s']:,.0f} MB/s "
            f"at {cal['large_us_req'] / 10:.0f} us CPU/MB (10 MB answers) |"
        )
    out.append("")
    if meta.get("notes"):
        out += [f"- {n}" for n in meta["notes"]] + [""]
    all_keys: list[str] = []
    for n in names:
        all_keys += [k for k in results[n] if k not in all_keys]
    has_both = "dicomd" in results and "orthanc" in results
    hdr = ["test", "unit", *names]
    if has_both:
        hdr.append("dicomd/Orthanc")
    hdr += [f"p50 / p99 ms ({n})" for n in names]
    hdr += [f"srv / cli CPU % ({n})" for n in names]
    hdr += ["client us/req", "bound (guess)"]
    out += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for k in all_keys:
        ls = {n: results[n].get(k) for n in names}
        first = next(x for x in ls.values() if x is not None)
        row = [first.title, first.unit]
        for n in names:
            x = ls[n]
            cell = "-" if x is None else _f(x.value)
            if x is not None and x.unit == "inst/s" and x.mb_s:
                cell += f" ({_f(x.mb_s)} MB/s)"
            if x is not None and x.errors:
                cell += f" [{x.errors} err]"
            row.append(cell)
        if has_both:
            d, o = ls.get("dicomd"), ls.get("orthanc")
            ratio = "-"
            if d and o and o.value and math.isfinite(o.value) and math.isfinite(d.value):
                ratio = f"**{_ratio(d.value / o.value)}x**"
            if d and d.unit == "MB":
                ratio += " (lower is better)"
            row.append(ratio)
        row += ["-" if ls[n] is None else f"{_f(ls[n].p50_ms)} / {_f(ls[n].p99_ms)}" for n in names]  # type: ignore[union-attr]
        row += ["-" if ls[n] is None else f"{ls[n].srv_cpu:.0f} / {ls[n].cli_cpu:.0f}" for n in names]  # type: ignore[union-attr]
        row.append(" / ".join(f"{ls[n].cli_us:.0f}" for n in names if ls[n] is not None))  # type: ignore[union-attr]
        row.append(" / ".join(_bound(ls[n], cores) for n in names if ls[n] is not None))  # type: ignore[arg-type]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    if mode == "scale":
        out += scale_pivot(results, infos)
    for n in names:
        inf = infos.get(n, {})
        if inf:
            out.append(f"- {n}: " + ", ".join(f"{k}={_fmt_info(v)}" for k, v in inf.items()))
    notes = [(n, ln) for n in names for ln in results[n].values() if ln.note or ln.extra.get("err_sample")]
    for n, ln in notes:
        out.append(f"- {n} {ln.key}: {ln.note} {ln.extra.get('err_sample', '')}".rstrip())
    out.append("")
    return "\n".join(out)


def scale_pivot(results: dict[str, dict[str, Line]], infos: dict[str, dict[str, Any]]) -> list[str]:
    """Scale run: one row per (server and index, corpus size): p50 latency (1 conn) and req/s (8 conn)."""
    cols = [("qido_pid", "QIDO PatientID"), ("qido_name", "QIDO name*"), ("qido_date", "QIDO date range")]
    hdr = ["server (index)", "instances"] + [f"{t} p50 ms (1 conn) / req/s (8 conn)" for _, t in cols]
    hdr.append("study metadata p50 / p99 ms")
    rows = []
    for n, lines in results.items():
        idx = infos.get(n, {}).get("index")
        who = f"{n} ({idx})" if idx else n
        for size in sorted({int(k.split("_", 1)[0]) for k in lines if k.split("_", 1)[0].isdigit()}):
            row = [who, f"{size:,}"]
            for key, _ in cols:
                a, b = lines.get(f"{size}_{key}_c1"), lines.get(f"{size}_{key}_c8")
                row.append(f"{_f(a.p50_ms, 2) if a else '-'} / {_f(b.value) if b else '-'}")
            m = lines.get(f"{size}_meta_c1")
            row.append(f"{_f(m.p50_ms, 2)} / {_f(m.p99_ms, 2)}" if m else "-")
            rows.append("| " + " | ".join(row) + " |")
    if not rows:
        return []
    return ["How the cost grows:", "", "| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr), *rows, ""]


def _fmt_info(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.1f}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt_info(x)}" for k, x in v.items()) + "}"
    if isinstance(v, int) and v > 10**6:
        return f"{v / 1e6:.0f} MB"
    return str(v)


def write_report(mode: str, text: str, raw: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    path = RESULTS / f"{stamp}-{mode}.md"
    path.write_text(text)
    (RESULTS / f"{stamp}-{mode}.json").write_text(json.dumps(raw, indent=1, default=str))
    update_readme(mode, text, path)
    return path


def update_readme(mode: str, text: str, path: Path) -> None:
    """Copy a report into bench/README.md between its mode's markers."""
    if README.exists():
        s = README.read_text()
        a, z = f"<!-- latest:{mode}:start -->", f"<!-- latest:{mode}:end -->"
        if a in s and z in s:
            body = text.split("\n", 1)[1]
            new = f"{a}\nFrom `{path.relative_to(BENCH.parent)}`:\n{body}\n{z}"
            s = re.sub(re.escape(a) + ".*?" + re.escape(z), lambda _m: new, s, flags=re.S)
            README.write_text(s)


def raw_results(
    results: dict[str, dict[str, Line]], infos: dict[str, dict[str, Any]], meta: dict[str, Any]
) -> dict[str, Any]:
    """What the results .json holds (``load`` reads it back)."""
    return {
        "meta": meta,
        "infos": infos,
        "results": {n: {k: asdict(v) for k, v in r.items()} for n, r in results.items()},
    }


def load(path: Path) -> tuple[str, dict[str, dict[str, Line]], dict[str, dict[str, Any]], dict[str, Any]]:
    """(mode, results, infos, meta) of a results .json; the mode is the file name's last part."""
    d = json.loads(path.read_text())
    res = {n: {k: Line(**v) for k, v in r.items()} for n, r in d["results"].items()}
    return path.stem.split("-")[-1], res, d["infos"], d["meta"]


def rerender(path: Path) -> str:
    """``--render``: the report of a results .json, written to the .md beside it and into the README."""
    mode, results, infos, meta = load(path)
    text = render(mode, results, infos, meta)
    md = path.resolve().with_suffix(".md")
    md.write_text(text)
    update_readme(mode, text, md)
    return text
