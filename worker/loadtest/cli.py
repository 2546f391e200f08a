"""`comfy-worker loadtest`: send N generations to one or more targets, write the report.

    comfy-worker loadtest WORKFLOW_OR_TEMPLATE --target vast:ENDPOINT [--target runpod:ID ...]
                          [--requests N] [--concurrency C | --rate R] [--out DIR]
                          [--gpu-price-per-hour [TARGET=]PRICE ...]
    comfy-worker loadtest --compare RUN_A/ RUN_B/ [--out DIR]

WORKFLOW_OR_TEMPLATE is an API-format graph, a request `input` or `{"input": ...}` file
(as `call` takes), or the name of a template in workflows/ (its defaults). Each request
gets fresh seeds and comes back inline. Targets (worker/loadtest/targets.py) run one after
another, each with the same load: closed loop at --concurrency C (default 1) or open loop
at --rate R per second (Poisson arrivals). DIR receives results.jsonl (one line per
request, written as answers come), run.json, report.md, report.html, stats.json and the
PNG plots. Ctrl-C stops sending, cancels what is in flight and still writes the report.
Exit status: 0 when every request succeeded, 1 when some failed, 2 on bad arguments,
130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from comfy_bridge import logs

DEFAULT_LOCAL_ROUTER = "http://127.0.0.1:8081"
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0]
    p.add_argument("workflow", nargs="?", help="workflow/input/payload JSON file, or a template name in workflows/")
    p.add_argument("--target", action="append", default=[], metavar="KIND:VALUE",
                   help="vast:ENDPOINT, bridge:URL or runpod:ENDPOINT_ID (repeat for several)")
    p.add_argument("--requests", "-n", type=int, default=100, help="requests per target (default 100)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", "-c", type=int, help="closed loop: requests in flight (default 1)")
    load.add_argument("--rate", type=float, help="open loop: Poisson arrivals, requests per second")
    p.add_argument("--out", type=Path, help="report folder (default ./loadtest-<UTC time>)")
    p.add_argument("--router", default=os.environ.get("COMFY_WORKER_ROUTER_URL", DEFAULT_LOCAL_ROUTER),
                   help=f"vast: router URL (default COMFY_WORKER_ROUTER_URL or {DEFAULT_LOCAL_ROUTER}; "
                        "Vast's is https://run.vast.ai)")
    p.add_argument("--api-key", default=os.environ.get("VAST_API_KEY", "local"),
                   help="vast: API key (default VAST_API_KEY or 'local')")
    p.add_argument("--vast-api-url",
                   help="vast: where to look up the workers' $/hour (default https://console.vast.ai unless the "
                        "router is on loopback); used for targets without --gpu-price-per-hour")
    p.add_argument("--runpod-url", default=os.environ.get("RUNPOD_API_URL", "https://api.runpod.ai"),
                   help="runpod: API base (default RUNPOD_API_URL or https://api.runpod.ai)")
    p.add_argument("--gpu-price-per-hour", action="append", default=[], metavar="[TARGET=]PRICE",
                   help="$/hour of a target's GPU (no TARGET=: every target); gives $ per 1,000 images")
    p.add_argument("--deadline", type=float, default=600.0, help="per-request deadline in seconds (default 600)")
    p.add_argument("--seed", type=int, help="seeds the arrivals and the generation seeds (repeatable runs)")
    p.add_argument("--label", default="", help="a name for this run in reports and --compare")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("RUN_A", "RUN_B"),
                   help="report two earlier runs side by side instead of running")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


class UsageError(ValueError):
    """Arguments that cannot work; the message says what to change."""


def parse_prices(values: list[str], targets: list[str]) -> dict[str, float]:
    prices: dict[str, float] = {}
    for value in values:
        name, sep, price = value.rpartition("=")
        try:
            amount = float(price)
        except ValueError:
            raise UsageError(f"--gpu-price-per-hour {value!r}: PRICE must be a number of dollars per hour") from None
        if amount < 0:
            raise UsageError(f"--gpu-price-per-hour {value!r}: a price cannot be negative")
        if not sep:
            prices.update({t: amount for t in targets if t not in prices})
        elif name not in targets:
            raise UsageError(f"--gpu-price-per-hour {value!r}: {name!r} is not one of the targets {targets}")
        else:
            prices[name] = amount
    return prices


def load_job(spec: str) -> tuple[dict[str, Any], str]:
    """The request `input` to send (fresh seeds are added per request) and how to name it."""
    from comfy_bridge.errors import BridgeError
    from comfy_bridge.templates import TemplateStore
    from worker import benchmark
    from worker.settings import WORKFLOWS_DIR

    path = Path(spec)
    if path.is_file():
        try:
            return benchmark.load_input(path), str(path)
        except BridgeError as e:
            raise UsageError(e.message) from e
    try:
        graph = TemplateStore(WORKFLOWS_DIR).expand(spec, {})
    except BridgeError as e:
        raise UsageError(f"{spec!r} is neither a file nor a template: {e.message}") from e
    return {"workflow_json": graph, "return_outputs_as_base64": True}, f"template {spec}"


def _is_local(specs: list[str], router: str, runpod_url: str) -> bool:
    def loop(url: str) -> bool:
        return any(h in url for h in _LOOPBACK)

    return all(
        loop(s.partition(":")[2]) if s.startswith("bridge:") else loop(router if s.startswith("vast:") else runpod_url)
        for s in specs
    )


def _check_installed() -> None:
    import importlib.util

    missing = [m for m in ("matplotlib", "tqdm") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"{', '.join(missing)} not installed: pip install 'comfy-vast-worker[loadtest]'")


def run(args: argparse.Namespace) -> int:
    logs.setup(args.log_level)
    return asyncio.run(run_async(args))


async def run_async(args: argparse.Namespace) -> int:
    """The whole command in a running loop (tests await it); the exit status."""
    try:
        _check_installed()
        if args.compare:
            return await asyncio.to_thread(_compare, args)
        if not args.workflow or not args.target:
            raise UsageError("give a WORKFLOW_OR_TEMPLATE and at least one --target (or --compare RUN_A RUN_B)")
        if args.requests < 1 or (args.concurrency is not None and args.concurrency < 1) or (
                args.rate is not None and args.rate <= 0):
            raise UsageError("--requests and --concurrency must be at least 1, --rate above 0")
        if len(set(args.target)) != len(args.target):
            raise UsageError("each --target may be given once")
        job, workflow_name = await asyncio.to_thread(load_job, args.workflow)
        prices = parse_prices(args.gpu_price_per_hour, args.target)
        return await _run(args, job, workflow_name, prices)
    except UsageError as e:
        print(f"comfy-worker loadtest: {e}", file=sys.stderr)
        return 2


def _compare(args: argparse.Namespace) -> int:
    from worker.loadtest.protocol import RunFolderError, read_run

    runs = []
    for folder in args.compare:
        try:
            run_ = read_run(folder)
        except RunFolderError as e:
            raise UsageError(str(e)) from e
        runs.append((run_.meta.label or folder.name or str(folder), run_))
    if runs[0][0] == runs[1][0]:
        runs = [(f"A {runs[0][0]}", runs[0][1]), (f"B {runs[1][0]}", runs[1][1])]
    out = args.out or Path(f"loadtest-compare-{_stamp()}")
    write_report(runs, out)
    print(f"report: {out / 'report.md'}  {out / 'report.html'}")
    return 0


def write_report(runs: list[tuple[str, Any]], out: Path) -> dict[str, Any]:
    """report.md, report.html, the plots and stats.json (the figures, per target)."""
    from worker.loadtest import report

    figures = report.build(runs, out)
    (out / "stats.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures


def _stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


async def _run(args: argparse.Namespace, job: dict[str, Any], workflow_name: str, prices: dict[str, float]) -> int:
    from tqdm import tqdm

    from worker.loadtest.protocol import RESULTS, RequestRecord, Run, RunMeta, TargetMeta, write_meta
    from worker.loadtest.runner import Load, Progress, TargetRun
    from worker.loadtest.targets import TargetSpecError, parse_target

    try:
        targets = [parse_target(s, router_url=args.router, api_key=args.api_key, runpod_url=args.runpod_url,
                                runpod_api_key=os.environ.get("RUNPOD_API_KEY")) for s in args.target]
    except TargetSpecError as e:
        raise UsageError(str(e)) from e
    out: Path = args.out or Path(f"loadtest-{_stamp()}")
    out.mkdir(parents=True, exist_ok=True)
    results = out / RESULTS
    results.write_text("", encoding="utf-8")
    load = Load(requests=args.requests, concurrency=None if args.rate else (args.concurrency or 1),
                rate_per_s=args.rate, deadline_s=args.deadline, seed=args.seed)
    meta = RunMeta(label=args.label, workflow=workflow_name, requests=args.requests,
                   mode="open" if args.rate else "closed", concurrency=load.concurrency, rate_per_s=args.rate,
                   seed=args.seed, started=time.time(), local=_is_local(args.target, args.router, args.runpod_url),
                   targets=[TargetMeta(name=t.name, kind=t.kind, gpu_price_per_hour=prices.get(t.name),  # type: ignore[arg-type]
                                       price_source="--gpu-price-per-hour" if t.name in prices else None)
                            for t in targets])
    write_meta(out, meta)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():  # a second Ctrl-C: back to the default (KeyboardInterrupt), no report
            loop.remove_signal_handler(sig)
        else:
            print(f"\n{sig.name}: stopping; requests in flight are cancelled, the report is written", file=sys.stderr)
        stop.set()

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
    except (NotImplementedError, RuntimeError):
        pass
    records: list[RequestRecord] = []
    try:
        for target in targets:
            if stop.is_set():
                break
            bar = tqdm(total=load.requests, desc=target.name, unit="req", file=sys.stderr, disable=None)

            def show(p: Progress, bar: Any = bar) -> None:
                bar.n = p.done + p.failed
                bar.set_postfix(sent=p.sent, done=p.done, failed=p.failed, refresh=True)

            try:
                records += await TargetRun(target, job, load, results, Progress(on_change=show)).run(stop)
            finally:
                bar.close()
    finally:
        for target in targets:
            await target.aclose()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass
        meta.ended = time.time()
        meta.interrupted = stop.is_set()
        _prices_from_workers(meta, records)
        await _prices_from_vast(args, meta, records)
        await asyncio.to_thread(write_meta, out, meta)
        figures = await asyncio.to_thread(write_report, [("", Run(meta=meta, records=records))], out)
    _print_headline(figures, out)
    if meta.interrupted:
        return 130
    return 0 if all(r.status == "success" for r in records) else 1


def _prices_from_workers(meta: Any, records: list[Any]) -> None:
    """A target without a price given takes the one its workers billed at (`cost`)."""
    from collections import Counter

    for t in meta.targets:
        if t.gpu_price_per_hour is not None:
            continue
        seen = Counter(r.worker_price_per_hour for r in records
                       if r.target == t.name and r.worker_price_per_hour is not None)
        if seen:
            t.gpu_price_per_hour = seen.most_common(1)[0][0]
            t.price_source = "the workers' cost (COMFY_WORKER_GPU_PRICE_PER_HOUR)"


async def _prices_from_vast(args: argparse.Namespace, meta: Any, records: list[Any]) -> None:
    """A vast: target still without a price takes the Vast API's dph_total of its workers,
    averaged over the requests they answered."""
    from worker.loadtest.vast_prices import DEFAULT_VAST_API, PriceLookupError, worker_prices

    api_url = args.vast_api_url or (None if any(h in args.router for h in _LOOPBACK) else DEFAULT_VAST_API)
    for t in meta.targets:
        if t.kind != "vast" or t.gpu_price_per_hour is not None or api_url is None:
            continue
        answered = [r.worker for r in records if r.target == t.name and r.worker and r.status != "cancelled"]
        if not answered:
            continue
        try:
            prices = await worker_prices(args.api_key, sorted(set(answered)), api_url)
        except PriceLookupError as e:
            t.price_source = f"none: {e}"
            continue
        priced = [prices[w] for w in answered if w in prices]
        t.gpu_price_per_hour = round(sum(priced) / len(priced), 6)
        t.price_source = f"Vast API dph_total of {len(prices)} worker(s), weighted by requests"


def _print_headline(figures: dict[str, Any], out: Path) -> None:
    for name, s in figures.items():
        lat = s["latency_ms"]
        cost = s["usd_per_1000_gpu"]
        print(f"{name}: {s['succeeded']}/{s['requests']} ok, p50 {_ms(lat['p50'])} p95 {_ms(lat['p95'])} "
              f"p99 {_ms(lat['p99'])} max {_ms(lat['max'])}, {s['throughput_per_s'] or 0:.2f}/s"
              + (f", ${cost:.4f} per 1,000 images (GPU time)" if cost is not None else ""))
    print(f"report: {out / 'report.md'}  {out / 'report.html'}  ({out / 'results.jsonl'})")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"
