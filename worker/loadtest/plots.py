"""The report's plots, PNG files drawn with matplotlib's headless Agg backend (no display
needed): latency distribution, latency over time with failures marked, throughput and
requests in flight over time, requests per worker. Each plot shows every series given
(the targets of one run, or of two runs under --compare), one colour each.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from worker.loadtest.protocol import RequestRecord  # noqa: E402

Series = list[tuple[str, list[RequestRecord]]]  # (label, records)
PLOTS = {
    "latency_hist.png": "Latency distribution (successful requests)",
    "latency_time.png": "Latency over time (x: failed)",
    "throughput.png": "Throughput and requests in flight",
    "per_worker.png": "Requests per worker",
}


def _t0(records: list[RequestRecord]) -> float:
    return min((r.start for r in records), default=0.0)


def _latency_hist(ax: plt.Axes, series: Series) -> None:
    for label, recs in series:
        lat = [r.latency_ms for r in recs if r.status == "success"]
        if lat:
            ax.hist(lat, bins=min(40, max(5, len(lat) // 3)), alpha=0.5, label=f"{label} (n={len(lat)})")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("requests")


def _latency_time(ax: plt.Axes, series: Series) -> None:
    for n, (label, recs) in enumerate(series):
        t0, color = _t0(recs), f"C{n}"
        ok = [r for r in recs if r.status == "success"]
        bad = [r for r in recs if r.status == "failed"]
        ax.scatter([r.start - t0 for r in ok], [r.latency_ms for r in ok], s=8, color=color, label=label)
        if bad:
            ax.scatter([r.start - t0 for r in bad], [r.latency_ms for r in bad], s=40, marker="x", color="red",
                       label=f"{label}: failed ({len(bad)})")
    ax.set_xlabel("time since the first request (s)")
    ax.set_ylabel("latency (ms)")


def _throughput(ax: plt.Axes, series: Series) -> None:
    twin = ax.twinx()
    for n, (label, recs) in enumerate(series):
        if not recs:
            continue
        t0, color = _t0(recs), f"C{n}"
        span = max(r.end for r in recs) - t0
        ends = [r.end - t0 for r in recs if r.status == "success"]
        edges = np.linspace(0.0, max(span, 1e-3), max(5, min(30, len(ends) // 4)) + 1)
        width = edges[1] - edges[0]
        counts, _ = np.histogram(ends, bins=edges)
        ax.step(edges[:-1], counts / width, where="post", color=color, label=f"{label}: done/s")
        times = np.linspace(0.0, span, 200)
        inflight = [sum(1 for r in recs if r.start - t0 <= t < r.end - t0) for t in times]
        twin.plot(times, inflight, linestyle=":", color=color, label=f"{label}: in flight")
    ax.set_xlabel("time since the first request (s)")
    ax.set_ylabel("successful requests per second")
    twin.set_ylabel("requests in flight")
    handles = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    if handles[0] or more[0]:
        ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize="small")


def _per_worker(ax: plt.Axes, series: Series) -> None:
    names: list[str] = []
    counts: list[int] = []
    colors: list[str] = []
    for n, (label, recs) in enumerate(series):
        workers = sorted({r.worker or "(unknown)" for r in recs if r.status != "cancelled"})
        for w in workers:
            names.append(f"{label}\n{w}")
            counts.append(sum(1 for r in recs if (r.worker or "(unknown)") == w and r.status != "cancelled"))
            colors.append(f"C{n}")
    ax.bar(range(len(names)), counts, color=colors)
    ax.set_xticks(range(len(names)), names, fontsize="x-small", rotation=20, ha="right")
    ax.set_ylabel("requests answered")


_DRAW = {
    "latency_hist.png": _latency_hist,
    "latency_time.png": _latency_time,
    "throughput.png": _throughput,
    "per_worker.png": _per_worker,
}


def draw_all(series: Series, folder: Path) -> list[Path]:
    """Write every plot into `folder`; the paths, in PLOTS order."""
    paths: list[Path] = []
    for name, title in PLOTS.items():
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        try:
            _DRAW[name](ax, series)
            ax.set_title(title)
            if name in ("latency_hist.png", "latency_time.png") and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
            fig.tight_layout()
            path = folder / name
            fig.savefig(path, format="png")
            paths.append(path)
        finally:
            plt.close(fig)
    return paths
