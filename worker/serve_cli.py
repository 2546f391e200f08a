"""`comfy-worker serve`: the Vast PyWorker in front of ComfyUI, on Vast or on a laptop.

    comfy-worker serve (--comfyui-url URL | --comfyui-path DIR [--comfyui-python PY]) [--port N]
    comfy-worker serve --local (--comfyui-url URL | --comfyui-path DIR [--comfyui-python PY])
                       [--port N] [--router-port N] [--endpoint NAME] [--api-key KEY]

On Vast the environment names the autoscaler and this machine (CONTAINER_ID,
REPORT_ADDR, PUBLIC_IPADDR, WORKER_PORT, VAST_TCP_PORT_<WORKER_PORT>). With --local
a router emulator (worker/emulator) starts on loopback and those variables point at it;
signatures are still checked (UNSECURED stays false), so what runs is what runs on Vast.
--comfyui-path launches ComfyUI as a supervised child; --comfyui-url uses one already
running. Settings: COMFY_WORKER_* (worker/settings.py) and COMFY_BRIDGE_* (the bridge).

Everything runs in one event loop: the bridge app on 127.0.0.1:<free port>, the
framework's Worker forwarding to it, and in --local mode the emulator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from comfy_bridge import logs

log = logs.get(__name__)

VAST_ENV = ("CONTAINER_ID", "REPORT_ADDR", "PUBLIC_IPADDR", "WORKER_PORT")
DEFAULT_ROUTER_PORT = 8081
DEFAULT_WORKER_PORT = 3000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0]
    p.add_argument("--local", action="store_true",
                   help="start a Vast router emulator on loopback and serve through it (no Vast needed)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--comfyui-url", help="a running ComfyUI (default: COMFY_BRIDGE_COMFYUI_URL)")
    src.add_argument("--comfyui-path", type=Path, help="ComfyUI's folder: launch and supervise it as a child")
    p.add_argument("--comfyui-python", help="Python that runs ComfyUI (default: its venv, else this one)")
    p.add_argument("--comfyui-port", type=int, default=18188, help="port of the launched ComfyUI (0: any free)")
    p.add_argument("--port", type=int,
                   help=f"the worker's port (WORKER_PORT; --local default {DEFAULT_WORKER_PORT}, 0: any free)")
    p.add_argument("--host", help="address the worker binds (default 0.0.0.0; 127.0.0.1 with --local)")
    p.add_argument("--router-port", type=int, default=DEFAULT_ROUTER_PORT,
                   help=f"--local: the emulator's port (default {DEFAULT_ROUTER_PORT}; 0: any free)")
    p.add_argument("--endpoint", default="local", help="--local: endpoint name the emulator serves")
    p.add_argument("--api-key", default="local", help="--local: api key the emulator accepts")
    p.add_argument("--benchmark-workflow", type=Path, help="overrides COMFY_WORKER_BENCHMARK_WORKFLOW")
    p.add_argument("--provision-models", type=Path, metavar="MANIFEST",
                   help="with --comfyui-path: verify/download the manifest's models while ComfyUI starts")
    p.add_argument("--state-dir", type=Path,
                   help="where the benchmark result is kept (default COMFY_WORKER_STATE_DIR; --local: a temp dir)")
    p.add_argument("--deploy-file", type=Path,
                   help="deploy.toml: endpoint settings (max_queue_time; with --local, the endpoint name) from it")
    p.add_argument("--deploy-env", help="with --deploy-file: the [env.NAME] overlay")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    logs.setup(args.log_level)
    if not args.local:
        missing = [k for k in VAST_ENV if not os.environ.get(k) and not (k == "WORKER_PORT" and args.port)]
        if missing:
            print(
                f"comfy-worker serve: {', '.join(missing)} not set: these come from Vast. "
                "To run without Vast, add --local.",
                file=sys.stderr,
            )
            return 2
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 130


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _say(text: str) -> None:
    print(text, flush=True)


async def serve(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    """Run until `stop` is set (or SIGINT/SIGTERM); the exit code."""
    from aiohttp import web

    from comfy_bridge.app import RUNNER_KEY, build_app
    from comfy_bridge.errors import BadRequest
    from comfy_bridge.settings import BridgeSettings
    from worker import benchmark
    from worker.lifecycle import WorkerLifecycle
    from worker.pyworker import ROUTE, build_worker
    from worker.provision_overlap import ModelsProvisioning
    from worker.self_measure import SelfMeasure
    from worker.settings import DEFAULT_BENCHMARK, WorkerSettings
    from worker.workload import WorkloadModel

    from comfy_bridge.shutdown import GracefulShutdown

    stop = stop or asyncio.Event()

    overrides: dict[str, Any] = {}
    if args.benchmark_workflow:
        overrides["benchmark_workflow"] = args.benchmark_workflow.resolve()
    if args.host:
        overrides["host"] = args.host
    elif args.local and not os.environ.get("COMFY_WORKER_HOST"):
        overrides["host"] = "127.0.0.1"
    if getattr(args, "deploy_file", None):  # the endpoint as deploy.toml defines it
        from comfy_bridge.errors import DeployFailed
        from worker.deploy.config import local_endpoint_settings

        try:
            endpoint_name, endpoint_overrides = local_endpoint_settings(args.deploy_file, args.deploy_env)
        except DeployFailed as e:
            _say(f"comfy-worker serve: {e.message}")
            return 2
        overrides.update(endpoint_overrides)
        if args.local and args.endpoint == "local":
            args.endpoint = endpoint_name
        _say(f"endpoint {endpoint_name!r} from {args.deploy_file}: max_queue_time "
             f"{endpoint_overrides['max_queue_time_s']:g} s")
    settings = WorkerSettings(**overrides)
    bridge_settings = BridgeSettings()
    cleanups: list[Any] = []  # async callables, run last-first

    # SIGTERM (Vast scaling down or replacing the worker): new /generate/sync calls get 503
    # shutting_down (retriable, relayed by the PyWorker), requests in flight get
    # COMFY_BRIDGE_SHUTDOWN_GRACE_S to finish; then the cleanups below stop ComfyUI; exit 0.
    # A second signal cuts the drain short. The PyWorker framework handles no signal itself.
    shutdown = GracefulShutdown(grace_s=bridge_settings.shutdown_grace_s)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        shutdown.install((signal.SIGTERM, signal.SIGINT))
    drained = asyncio.create_task(shutdown.wait(), name="graceful-shutdown-wait")
    drained.add_done_callback(lambda _: stop.set())
    cleanups.append(lambda: _finish_shutdown(shutdown, drained))

    emulator = None
    try:
        # 1. Where the autoscaler is: Vast's, or our emulator on loopback.
        if args.local:
            from worker.emulator import RouterEmulator

            emulator = RouterEmulator(endpoint=args.endpoint, api_key=args.api_key)
            try:
                router_url = await emulator.start("127.0.0.1", args.router_port)
            except OSError:
                router_url = await emulator.start("127.0.0.1", 0)
                _say(f"port {args.router_port} is taken; the router emulator uses {router_url}")
            cleanups.append(emulator.stop)
            port = args.port if args.port is not None else DEFAULT_WORKER_PORT
            port = port or free_port()
            os.environ.update({
                "REPORT_ADDR": router_url,
                "PUBLIC_IPADDR": "127.0.0.1",
                "WORKER_PORT": str(port),
                f"VAST_TCP_PORT_{port}": str(port),
                "UNSECURED": "false",
                "USE_SSL": "false",
            })
            os.environ.setdefault("CONTAINER_ID", "1")
            os.environ.setdefault("WORKER_HTTP_PORT", str(free_port()))
        else:
            if args.port:
                os.environ["WORKER_PORT"] = str(args.port)
            port = int(os.environ["WORKER_PORT"])
            os.environ.setdefault(f"VAST_TCP_PORT_{port}", str(port))

        # 2. The benchmark, and the state folder that caches its result (.has_benchmark).
        templates = _template_store(bridge_settings)
        workload = WorkloadModel(settings.request_units, settings.default_units, templates)
        try:
            job = benchmark.load_input(settings.benchmark_workflow)
        except BadRequest as e:
            _say(f"comfy-worker serve: {e.message}")
            return 2
        graph = benchmark.graph_of(job)
        if graph is None and job.get("modifier") and templates is not None:
            graph = templates.expand(job["modifier"], job.get("modifications") or {})
        if args.state_dir:
            state_root = args.state_dir
        elif args.local:  # a fresh benchmark each local run, cleaned up at exit
            state_root = Path(tempfile.mkdtemp(prefix="comfy-worker-"))
            cleanups.insert(0, lambda: asyncio.to_thread(shutil.rmtree, state_root, True))
        else:
            state_root = settings.state_dir
        fp = benchmark.fingerprint(job, settings.benchmark_runs, settings.benchmark_concurrency,
                                   settings.request_units, settings.default_units)
        state = Path(state_root).resolve() / f"bench-{fp}"
        state.mkdir(parents=True, exist_ok=True)
        measured = SelfMeasure(settings, state, args.comfyui_path and args.comfyui_path.resolve())
        workload = measured.workload(workload)
        warm = asyncio.create_task(measured.warm())
        cleanups.append(lambda: _cancel(warm))

        # 3. ComfyUI: launched and supervised, or already running.
        supervisor = None
        if args.comfyui_path:
            try:
                from comfy_bridge.comfyui.supervisor import ComfySupervisor
            except ImportError:
                _say("--comfyui-path needs comfy_bridge.comfyui.supervisor, which is not installed")
                return 2
            comfy_port = args.comfyui_port or free_port()
            bridge_settings = bridge_settings.model_copy(update={
                "comfyui_url": f"http://127.0.0.1:{comfy_port}", "comfyui_path": args.comfyui_path.resolve()})
            supervisor = ComfySupervisor.from_settings(
                bridge_settings, python=args.comfyui_python,
                log_path=bridge_settings.comfyui_log_path or state / "comfyui.log",
            )
        elif args.comfyui_url:
            bridge_settings = bridge_settings.model_copy(update={"comfyui_url": args.comfyui_url.rstrip("/")})
        models = None
        if args.provision_models and args.comfyui_path:  # started now: it runs while ComfyUI starts
            models = ModelsProvisioning(args.provision_models.resolve(), args.comfyui_path.resolve())
            models.start()
            cleanups.append(models.cancel)
        os.chdir(state)

        # 4. The bridge, in this process, on a loopback port the framework forwards to.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        bridge_port = int(sock.getsockname()[1])
        bridge_app = build_app(bridge_settings, workload_fn=workload.graph_units, supervisor=supervisor,
                               on_executed=workload.observe)
        bridge_app.middlewares.append(shutdown.middleware())  # 503 shutting_down, in-flight count
        # Requests kept for callers who left (S3, webhook) and webhooks still running finish
        # before the drain ends, so before the lifecycle stops ComfyUI.
        shutdown.add_drain(bridge_app[RUNNER_KEY].drain, "bridge background work")
        bridge_runner = web.AppRunner(bridge_app, access_log=None, handler_cancellation=True)
        await bridge_runner.setup()
        await web.SockSite(bridge_runner, sock).start()
        cleanups.append(bridge_runner.cleanup)

        # 5. The framework's Worker, with our lifecycle, metrics and relay.
        lifecycle = WorkerLifecycle(
            settings,
            bridge_url=f"http://127.0.0.1:{bridge_port}",
            comfyui_url=bridge_settings.comfyui_url,
            benchmark_graph=graph,
            staged_names=[i.get("name") for i in job.get("images") or [] if isinstance(i, dict)],
            supervisor=supervisor,
            timeline=measured.timeline,
            benchmark_run=measured.benchmark_run(f"http://127.0.0.1:{bridge_port}", job, workload),
            on_measured=measured.on_measured,
            state_dir=state,
            before_ready=models.wait if models else None,
        )
        cleanups.append(lifecycle.close)
        worker = build_worker(settings, bridge_port=bridge_port, lifecycle=lifecycle,
                              workload=workload, benchmark_job=job)
        if settings.benchmark_workflow.resolve() == DEFAULT_BENCHMARK.resolve():
            log.warning("the benchmark is the weightless default graph: set COMFY_WORKER_BENCHMARK_WORKFLOW "
                        "to a workflow like your traffic, or max_perf will not predict real requests")
        server = asyncio.create_task(worker.run_async(host=settings.host), name="pyworker")

        worker_url = f"http://{'127.0.0.1' if settings.host in ('0.0.0.0', '') else settings.host}:{port}"
        if emulator is not None:
            _say(f"router emulator: {router_url}  (endpoint {args.endpoint!r}, api key {args.api_key!r})")
            _say(f"worker:          {worker_url}{ROUTE}")
            _say(f"ComfyUI:         {bridge_settings.comfyui_url}")
            _say(f"state:           {state}")
            _say("waiting for ComfyUI and the benchmark...")
            announce = asyncio.create_task(_announce(emulator, router_url, args, settings.benchmark_workflow))
            cleanups.append(lambda: _cancel(announce))
        else:
            log.info("pyworker serving", extra={"fields": {"port": port, "bridge_port": bridge_port}})

        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({server, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if server in done and server.exception() is not None:
            log.error("the pyworker stopped: %r", server.exception())
            return 1
        await _cancel(server)
        return 0
    finally:
        for cb in reversed(cleanups):
            try:
                await cb()
            except Exception:
                log.warning("cleanup failed", exc_info=True)


async def _finish_shutdown(shutdown: Any, drained: asyncio.Task[Any]) -> None:
    """Stop handling signals; after an external stop, let nothing wait on the drain."""
    shutdown.uninstall()
    shutdown.force()
    await _cancel(drained)


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _announce(emulator: Any, router_url: str, args: argparse.Namespace, workflow: Path) -> None:
    """Print, once the emulator sees the worker ready (or errored), how to call it."""
    view = await emulator.wait_for(
        lambda: next((w for w in emulator.workers.values() if w.ready or w.error_msg), None),
        timeout=24 * 3600,
    )
    if view.error_msg:
        _say(f"the worker errored: {view.error_msg}")
        return
    extra = ""
    if args.endpoint != "local":
        extra += f" --endpoint {args.endpoint}"
    if args.api_key != "local":
        extra += f" --api-key {args.api_key}"
    _say(f"ready: max_perf {view.max_perf:.3g} units/s. Call it with:")
    _say(f"  comfy-worker call --router {router_url}{extra} {workflow} --out outputs/")


def _template_store(bridge_settings: Any) -> Any:
    try:
        from comfy_bridge.templates import TemplateStore
    except ImportError:
        return None
    try:
        return TemplateStore(bridge_settings.workflows_dir)
    except Exception:
        log.warning("templates not loaded", exc_info=True)
        return None
