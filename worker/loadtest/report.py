"""The report of one run, or of two side by side (--compare): report.md, report.html (the
same tables, plots embedded) and the PNGs (plots.py), all from results.jsonl + run.json
(protocol.py) through stats.py, so every figure can be recomputed from the files.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from pathlib import Path
from typing import Any, Callable

from worker.loadtest import plots, stats
from worker.loadtest.protocol import Run
from worker.loadtest.stats import TargetStats

Table = tuple[list[str], list[list[str]]]  # header, rows

METHODS = (
    "Latency percentiles are over successful requests, in ms, with numpy's default linear "
    "interpolation (`numpy.percentile(latency_ms, q)` over the `latency_ms` of the lines of "
    "results.jsonl whose status is success). Throughput: successful requests / (last `end` - first "
    "`start`). GPU-seconds: sum of `timings.execution_ms` / 1000 over successful requests. Fleet "
    "seconds: per worker, its last `end` minus its first `start`, summed. $ per 1,000 images = "
    "price per hour / 3600 x seconds / successful requests x 1000. Cancelled requests (in flight at "
    "Ctrl-C) count nowhere but in `cancelled`."
)


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.4f}"


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


_ROWS: list[tuple[str, Callable[[TargetStats], str]]] = [
    ("requests", lambda s: str(s.requests)),
    ("succeeded / failed / cancelled", lambda s: f"{s.succeeded} / {s.failed} / {s.cancelled}"),
    ("success rate", lambda s: "-" if s.success_rate is None else f"{s.success_rate:.1%}"),
    ("latency p50 (ms)", lambda s: _f(s.latency_ms["p50"])),
    ("latency p95 (ms)", lambda s: _f(s.latency_ms["p95"])),
    ("latency p99 (ms)", lambda s: _f(s.latency_ms["p99"])),
    ("latency max (ms)", lambda s: _f(s.latency_ms["max"])),
    ("throughput (images/s)", lambda s: _f(s.throughput_per_s, 3)),
    ("wall time (s)", lambda s: _f(s.wall_seconds, 2)),
    ("attempts (incl. retries)", lambda s: str(s.attempts)),
    ("retried on", lambda s: _counts(s.retries_by_reason)),
    ("cold waits: requests / 'no worker ready' polls", lambda s: f"{s.cold_waits} / {s.no_worker_ready_polls}"),
    ("workers seen", lambda s: str(len(s.workers))),
    ("GPU-seconds (sum of execution)", lambda s: _f(s.gpu_seconds, 3)),
    ("GPU-seconds per image", lambda s: _f(s.gpu_seconds_per_image, 4)),
    ("fleet seconds (per worker first send to last answer)", lambda s: _f(s.fleet_seconds, 2)),
    ("GPU price ($/h)", lambda s: (f"- ({s.price_source})" if s.price_source else "-") if s.price_per_hour is None
     else f"{s.price_per_hour:g} ({s.price_source or 'given'})"),
    ("$ per 1,000 images at GPU time", lambda s: _usd(s.usd_per_1000_gpu)),
    ("$ per 1,000 images at fleet time", lambda s: _usd(s.usd_per_1000_fleet)),
    ("$ reported by the workers (cost.usd, total)", lambda s: _usd(s.usd_reported_total)),
    ("output bytes (successful)", lambda s: f"{s.output_bytes:,}"),
]


def _side_by_side(all_stats: list[tuple[str, TargetStats]]) -> Table:
    return ["", *(label for label, _ in all_stats)], [[name, *(fn(s) for _, s in all_stats)] for name, fn in _ROWS]


def _failures(all_stats: list[tuple[str, TargetStats]]) -> Table:
    types = sorted({t for _, s in all_stats for t in s.failures_by_type})
    return ["error type", *(label for label, _ in all_stats)], [
        [t, *(str(s.failures_by_type.get(t, 0)) for _, s in all_stats)] for t in types
    ]


def _workers(all_stats: list[tuple[str, TargetStats]]) -> Table:
    rows = [[label, w.worker, str(w.requests), _f(w.first_latency_ms), _f(s.latency_ms["p50"]), _f(w.fleet_seconds, 2)]
            for label, s in all_stats for w in s.workers]
    return ["target", "worker", "requests", "first answer (ms)", "p50 of target (ms)", "fleet seconds"], rows


def _estimates(all_stats: list[tuple[str, TargetStats]]) -> Table:
    rows = []
    for kind, platform, low, high in stats.ESTIMATES:
        measured = [f"{label}: {_usd(s.usd_per_1000_gpu)} GPU / {_usd(s.usd_per_1000_fleet)} fleet"
                    for label, s in all_stats if s.kind == kind]
        rows.append([platform, f"${low:.2f} - ${high:.2f}", "; ".join(measured) or "not measured"])
    return ["platform (evaluation's estimate)", "$ per 1,000 SDXL images", "measured here"], rows


def _run_table(runs: list[tuple[str, Run]]) -> Table:
    rows = []
    for label, run in runs:
        m = run.meta
        load = f"closed loop, concurrency {m.concurrency}" if m.mode == "closed" else f"open loop, {m.rate_per_s:g}/s Poisson"
        started = dt.datetime.fromtimestamp(m.started, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        note = "interrupted (Ctrl-C)" if m.interrupted else "complete"
        rows.append([label, m.workflow, f"{m.requests}", load, started, note])
    return ["run", "workflow", "requests per target", "load", "started", "state"], rows


def _md_table(table: Table) -> str:
    header, rows = table
    if not rows:
        return "(none)\n"
    esc = [[c.replace("|", "\\|") for c in row] for row in [header, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines) + "\n"


def _html_table(table: Table) -> str:
    header, rows = table
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build(runs: list[tuple[str, Run]], out: Path) -> dict[str, Any]:
    """Write report.md, report.html and the plots into `out`; return the figures (per target)."""
    out.mkdir(parents=True, exist_ok=True)
    all_stats: list[tuple[str, TargetStats]] = []
    series: plots.Series = []
    for run_label, run in runs:
        for t in run.meta.targets:
            label = f"{run_label}: {t.name}" if run_label else t.name
            recs = [r for r in run.records if r.target == t.name]
            all_stats.append((label, stats.summarize(t, recs)))
            series.append((label, recs))
    pngs = plots.draw_all(series, out)
    local = any(run.meta.local for _, run in runs)
    title = "Load test" + (" comparison" if len(runs) > 1 else "")
    banner = ("Local run: every target was on loopback (emulator, ComfyUI double or CPU ComfyUI). "
              "These are not GPU figures." if local else "")
    sections: list[tuple[str, Table | None, str]] = [
        ("Run", _run_table(runs), ""),
        ("Per target", _side_by_side(all_stats), ""),
        ("Failures by type", _failures(all_stats), ""),
        ("Workers (cold starts: a worker's first answer beside the target's p50)", _workers(all_stats), ""),
        ("Cost beside the evaluation's estimates", _estimates(all_stats), ""),
        ("How the figures are computed", None, METHODS),
    ]
    md = [f"# {title}\n"]
    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.banner{background:#fff3cd;padding:8px}"
            f"</style></head><body><h1>{title}</h1>"]
    if banner:
        md.append(f"> **{banner}**\n")
        page.append(f"<p class='banner'><b>{html.escape(banner)}</b></p>")
    for heading, table, text in sections:
        md.append(f"## {heading}\n")
        page.append(f"<h2>{html.escape(heading)}</h2>")
        if table is not None:
            md.append(_md_table(table))
            page.append(_html_table(table))
        if text:
            md.append(text + "\n")
            page.append(f"<p>{html.escape(text)}</p>")
    md.append("## Plots\n")
    page.append("<h2>Plots</h2>")
    for png in pngs:
        caption = plots.PLOTS[png.name]
        md.append(f"![{caption}]({png.name})\n")
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        page.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    page.append("</body></html>")
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    (out / "report.html").write_text("".join(page), encoding="utf-8")
    return {label: s.model_dump() for label, s in all_stats}
