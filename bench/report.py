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


def _header(mode: str, names: list[str], meta: dict[str, Any]) -> list[str]:
    """Title and the machine table (machine, ceilings, versions, client)."""
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
    return out


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
    if mode == "replicas":
        return render_replicas(results, infos, meta, cores)
    names = list(results)
    out = _header(mode, names, meta)
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


# ---- the scale-out run (--replicas) ---------------------------------------------------------------

_PART_NAMES = {"dicomd": "dicomd", "postgresql": "PostgreSQL", "s3": "S3 emulator", "client": "client"}


def _cpu_parts(ln: Line) -> dict[str, float]:
    """CPU % of one core per part of a line (the server's alone for lines measured without parts)."""
    parts = dict(ln.extra.get("cpu_parts") or {"dicomd": ln.srv_cpu})
    parts["client"] = ln.cli_cpu
    return parts


def _replica_bound(ln: Line, cores: int, workers: int | None, server: str = "dicomd") -> str:
    """What limits a line on a machine whose `cores` all parts share; `workers`: dicomd worker processes
    of the setup (None when not dicomd, or unknown); `server`: what the server part is called."""
    if ln.errors and not ln.ops:
        return "errors"
    parts = _cpu_parts(ln)
    total = sum(parts.values())
    top = sorted(((v, k) for k, v in parts.items() if v >= 1), reverse=True)
    names = {**_PART_NAMES, "dicomd": server}
    share = ", ".join(f"{names.get(k, k)} {v:.0f}%" for v, k in top[:3])
    # one Python process: its threads share one interpreter lock, so ~75% of a core is its ceiling here
    if parts.get("s3", 0.0) >= 75:
        return f"S3 emulator (one Python process, ~1 core; {share})"
    if total >= 85 * cores:
        return f"CPU: {cores} cores shared ({share})"
    if workers and parts.get("dicomd", 0.0) >= 85 * workers:
        return f"dicomd workers ({workers} x ~1 core; {share})"
    by_replica: list[float] = ln.extra.get("cpu_by_replica", [])
    if workers and by_replica and max(by_replica) >= 85 * workers / len(by_replica):
        return f"one replica's worker(s) ({share})"
    if not workers and 85 <= parts.get("dicomd", 0.0) <= 115:
        return f"~1 core busy (serialized?) ({share})"
    if top and top[0][1] == "s3":
        return f"latency: S3 emulator round trips ({share})"
    return ("latency (commit round trips)" if ln.key.startswith("stow") else "latency") + f" ({share})"


def _per_core(ln: Line, part: str) -> str:
    """The line's figure per busy core of one part: what that part carries per core of its own."""
    busy = _cpu_parts(ln).get(part, 0.0)
    if busy < 5 or not math.isfinite(ln.value):
        return "-"
    return _f(100 * ln.value / busy)


def render_replicas(
    results: dict[str, dict[str, Line]], infos: dict[str, dict[str, Any]], meta: dict[str, Any], cores: int
) -> str:
    """The scale-out report: a summary (line x setup), the details with CPU per part and a bound guess,
    and each part's figure per busy core (how the figures would move with the parts on separate machines)."""
    names = list(results)
    extra = [n for n in meta["versions"] if n not in names]  # e.g. the S3 emulator
    out = _header("replicas", names + extra, meta)
    if meta.get("notes"):
        out += [f"- {n}" for n in meta["notes"]] + [""]
    keys: list[str] = []
    for n in names:
        keys += [k for k in results[n] if k not in keys]
    scaled = [n for n in names if infos.get(n, {}).get("replicas")]

    hdr = ["test", "unit", *names]
    if len(scaled) > 1:
        hdr.append(f"{scaled[-1]} / {scaled[0]}")
    out += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for k in keys:
        ls = {n: results[n].get(k) for n in names}
        first = next(x for x in ls.values() if x is not None)
        row = [first.title, first.unit]
        for n in names:
            x = ls[n]
            cell = "-" if x is None else _f(x.value)
            if x is not None and k.startswith("qido") and x.p99_ms is not None:
                cell += f" (p99 {_f(x.p99_ms)} ms)"
            if x is not None and x.errors:
                cell += f" [{x.errors} err]"
            row.append(cell)
        if len(scaled) > 1:
            a, z = ls.get(scaled[0]), ls.get(scaled[-1])
            ok = a and z and a.value and math.isfinite(a.value) and math.isfinite(z.value)
            row.append(f"**{_ratio(z.value / a.value)}x**" if ok else "-")  # type: ignore[union-attr]
        out.append("| " + " | ".join(row) + " |")
    out.append("")

    out += [
        "Details: CPU is % of one core, per part; all parts share the machine's "
        f"{cores} cores (the server part is Orthanc, or dicomd's supervisors and workers of all replicas).",
        "",
    ]
    hdr = ["test", "setup", "value", "p50 / p99 ms", "CPU % server / PostgreSQL / S3 emu / client"]
    hdr.append("CPU % per replica")
    s3_requests = any("s3_requests_per_op" in ln.extra for lines in results.values() for ln in lines.values())
    if s3_requests:
        hdr.append("S3 requests per op")
    hdr.append("bound (guess)")
    out += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for k in keys:
        for n in names:
            ln = results[n].get(k)
            if ln is None:
                continue
            workers = infos.get(n, {}).get("workers")  # dicomd worker processes in all
            p = _cpu_parts(ln)
            cpu = " / ".join(f"{p.get(x, 0.0):.0f}" for x in ("dicomd", "postgresql", "s3", "client"))
            per_replica = " / ".join(str(v) for v in ln.extra.get("cpu_by_replica", [])) or "-"
            value = f"{_f(ln.value)} {ln.unit}" + (f" [{ln.errors} err]" if ln.errors else "")
            row = [ln.title, n, value, f"{_f(ln.p50_ms)} / {_f(ln.p99_ms)}", cpu, per_replica]
            if s3_requests:
                per_op: dict[str, float] = ln.extra.get("s3_requests_per_op", {})
                row.append(", ".join(f"{k} {v:g}" for k, v in per_op.items() if v >= 0.1) or "-")
            row.append(_replica_bound(ln, cores, workers, "Orthanc" if n.startswith("orthanc") else "dicomd"))
            out.append("| " + " | ".join(row) + " |")
    out.append("")

    if scaled:
        out += [
            "Per busy core (the figure / (CPU % / 100) of each part): what each part carries per core of its "
            "own. On separate machines the setup's ceiling is the smallest of (cores given to a part) x "
            "(its figure per core), with dicomd's cores being the sum over the replicas' machines.",
            "",
        ]
        hdr = ["test", "setup", "dicomd", "PostgreSQL", "S3 emulator", "client"]
        out += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
        for k in keys:
            for n in scaled:
                ln = results[n].get(k)
                if ln is not None:
                    per = [_per_core(ln, x) for x in ("dicomd", "postgresql", "s3", "client")]
                    out.append("| " + " | ".join([ln.title, n, *per]) + " |")
        out.append("")

    for n in names:
        inf = infos.get(n, {})
        if inf:
            out.append(f"- {n}: " + ", ".join(f"{k}={_fmt_info(v)}" for k, v in inf.items()))
    for n in names:
        for ln in results[n].values():
            if ln.note or ln.extra.get("err_sample"):
                out.append(f"- {n} {ln.key}: {ln.note} {ln.extra.get('err_sample', '')}".rstrip())
    out.append("")
    return "\n".join(out)
