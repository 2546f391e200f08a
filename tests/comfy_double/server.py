"""ComfyDouble: an aiohttp server speaking ComfyUI v0.3.64's HTTP + websocket protocol."""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from .executor import Executor, PromptQueue, QueueItem
from .faults import ExecError, Faults
from .gc_pause import GcPause
from .node_library import MODEL_FOLDERS, Folders, NodeDef, build_library, extra_node
from .validation import Validator

SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": 100 * 1024 * 1024}


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class ComfyDouble:
    """A fake ComfyUI for tests and benches. See the package docstring for its limits."""

    def __init__(self, root: Path | None = None, exec_ms: float = 0.0, object_info_extra: dict | None = None,
                 models: dict[str, list[str]] | None = None, *, history_lag_s: float = 0.0, previews: bool = True,
                 gc_pause: GcPause | None = None, extra_model_paths: list[Path] | None = None):
        self._tmp: tempfile.TemporaryDirectory | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="comfy-double-")
            root = Path(self._tmp.name)
        self.root = Path(root).resolve()
        self.folders = Folders(self.root)
        for p in (self.folders.output, self.folders.input, self.folders.temp, self.folders.models):
            p.mkdir(parents=True, exist_ok=True)
        for folder in MODEL_FOLDERS:
            (self.folders.models / folder).mkdir(exist_ok=True)
        for folder, names in (models or {}).items():
            for name in names:
                target = self.folders.models / folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    target.write_bytes(b"")
        self.exec_ms = exec_ms
        self.history_lag_s = history_lag_s
        self.previews = previews
        self.gc_pause = gc_pause or GcPause()  # ComfyUI's periodic gc.collect() stall (gc_pause.py)
        self.gc_pause.load(list(extra_model_paths or []))
        self.library: dict[str, NodeDef] = build_library()
        for name, info in (object_info_extra or {}).items():
            self.library[name] = extra_node(name, info)
        self.faults = Faults()
        self.requests: list[RecordedRequest] = []
        self.record_requests = True  # benches with many requests may switch the log off
        self.prompts_executed = 0   # prompts in which at least one node really ran (not all cached)
        self.prompts_finished = 0   # prompts that reached `executing: null`, whatever their outcome
        self.nodes_executed = 0
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.number = 0
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.sockets_metadata: dict[str, dict] = {}
        self._validator = Validator(self.library, self.folders)
        self._host = "127.0.0.1"
        self._port = 0
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self._messages: asyncio.Queue | None = None
        self._history_probed: dict[str, asyncio.Event] = {}
        self._flags: dict[str, Any] = {}
        self.queue: PromptQueue | None = None
        self.executor: Executor | None = None

    # ------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self._host}:{self._port}/ws"

    @property
    def output_dir(self) -> Path:
        return self.folders.output

    @property
    def input_dir(self) -> Path:
        return self.folders.input

    @property
    def temp_dir(self) -> Path:
        return self.folders.temp

    @property
    def models_dir(self) -> Path:
        return self.folders.models

    @property
    def running(self) -> bool:
        return self._runner is not None

    # ------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0: ephemeral; after a stop(), 0 reuses the previous port)."""
        if self._runner is not None:
            return self.url
        if port == 0 and self._port:
            port = self._port
        if self.queue is None or self.executor is None:
            self.queue = PromptQueue(self)
            self.executor = Executor(self)
        else:  # events bind to the loop that first waits on them: a restart may be in a new loop
            self.queue.not_empty = asyncio.Event()
            if self.queue.pending:
                self.queue.not_empty.set()
            self.executor.interrupt = asyncio.Event()
            self.executor.release = asyncio.Event()
        self._messages = asyncio.Queue()
        app = web.Application(middlewares=[self._record_mw], client_max_size=SERVER_FEATURES["max_upload_size"])
        self._add_routes(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        self._runner = runner
        self._host = host
        self._port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._tasks = [asyncio.create_task(self._publish_loop(), name="comfy-double-publish"),
                       asyncio.create_task(self._worker(), name="comfy-double-worker")]
        return self.url

    async def stop(self, forget: bool = False) -> None:
        """Stop serving (connections refused until start()); a prompt that was running is
        lost. Queue, history and caches survive unless `forget` (a crashed process:
        everything goes, prompt numbers restart at 0)."""
        if self._runner is None:
            return
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
        if self.queue is not None and self.queue.running:
            self.queue.running.clear()
        await self.close_websockets()
        await self._runner.cleanup()
        self._runner = None
        if forget:
            self.queue = None
            self.executor = None
            self.number = 0
            self.client_id = None
            self.last_node_id = None

    async def close(self) -> None:
        await self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> "ComfyDouble":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ------------------------------------------------------------ faults API

    def fail_next_prompt(self, exception_type: str = "torch.OutOfMemoryError",
                         message: str = "Allocation on device ", node_id: str | None = None,
                         class_type: str | None = None) -> None:
        """The next prompt that executes anything raises at the chosen node (default: the first that runs)."""
        self.faults.exec_errors.append(ExecError(exception_type, message, node_id, class_type))

    def hang_next_prompt(self, count: int = 1) -> None:
        """The next prompt(s) block at their first executed node until interrupt or release()."""
        self.faults.hang_prompts += count

    def release(self) -> None:
        """Let a hung prompt carry on."""
        if self.executor is not None:
            self.executor.release.set()

    def close_websockets_mid_prompt(self, count: int = 1) -> None:
        """Close every websocket when the next prompt starts its first node; execution goes on."""
        self.faults.close_ws_prompts += count

    def slow_history(self, seconds: float) -> None:
        self.faults.history_delay_s = seconds

    def fail_uploads(self, status: int = 500, count: int | None = None) -> None:
        self.faults.upload_status = status
        self.faults.upload_failures = count

    def fail_http(self, path: str, status: int | None) -> None:
        """Answer `status` on `path` (any method); None clears it."""
        if status is None:
            self.faults.http_status.pop(path, None)
        else:
            self.faults.http_status[path] = status

    def reset_faults(self) -> None:
        self.faults.clear()
        self.release()

    def interrupt(self) -> None:
        if self.executor is not None:
            self.executor.interrupt.set()

    # ------------------------------------------------------------ helpers for tests

    def history_ids(self) -> list[str]:
        return list(self.queue.history) if self.queue else []

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path and (method is None or r.method == method)]

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until nothing is pending or running."""
        async def idle() -> None:
            while self.queue and self.queue.remaining():
                await asyncio.sleep(0.005)
        await asyncio.wait_for(idle(), timeout)

    # ------------------------------------------------------------ messaging

    def queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": self.queue.remaining() if self.queue else 0}}

    def queue_updated(self) -> None:
        self.send_sync("status", {"status": self.queue_info()})

    def send_sync(self, event: str | int, data: Any, sid: str | None = None) -> None:
        if self._messages is not None:
            self._messages.put_nowait((event, data, sid))

    async def flush(self) -> None:
        """Wait until every queued message has been written to the sockets."""
        if self._messages is not None:
            await self._messages.join()

    def client_supports_metadata(self, sid: str | None) -> bool:
        if sid is None:
            return False
        return bool(self.sockets_metadata.get(sid, {}).get("feature_flags", {}).get("supports_preview_metadata"))

    async def _send(self, event: str | int, data: Any, sid: str | None) -> None:
        if sid is None:
            targets = list(self.sockets.values())
        elif sid in self.sockets:
            targets = [self.sockets[sid]]
        else:
            return
        for ws in targets:
            try:
                if isinstance(event, int):
                    await ws.send_bytes(event.to_bytes(4, "big") + bytes(data))
                else:
                    await ws.send_json({"type": event, "data": data})
            except (ConnectionError, RuntimeError):
                pass

    async def _publish_loop(self) -> None:
        assert self._messages is not None
        while True:
            msg = await self._messages.get()
            try:
                await self._send(*msg)
            finally:
                self._messages.task_done()

    async def close_websockets(self) -> None:
        for ws in list(self.sockets.values()):
            try:
                await ws.close()
            except Exception:
                pass

    # ------------------------------------------------------------ worker

    async def _worker(self) -> None:
        assert self.queue is not None and self.executor is not None
        while True:
            item, item_id = await self.queue.get()
            try:
                await self.executor.execute(item)
            except asyncio.CancelledError:
                raise
            except Exception as ex:  # a bug in the double: report it like a failed prompt
                self.executor.success = False
                self.executor.history_result = {"outputs": {}, "meta": {}}
                self.executor.status_messages.append(["execution_error", {"prompt_id": item.prompt_id,
                                                      "exception_message": f"ComfyDouble bug: {ex!r}"}])
            await self.flush()
            await self._history_lag(item.prompt_id)
            ex_ = self.executor
            self.queue.task_done(item_id, ex_.history_result, {
                "status_str": "success" if ex_.success else "error", "completed": ex_.success,
                "messages": ex_.status_messages})
            if self.client_id is not None:
                self.send_sync("executing", {"node": None, "prompt_id": item.prompt_id}, self.client_id)
            self.prompts_finished += 1
            self._apply_flags()
            self.gc_pause.after_prompt()

    async def _history_lag(self, prompt_id: str) -> None:
        """The /history race: the terminal event is already on the wire; the history entry
        lands only now. With history_lag_s > 0 the gap is held open until a GET
        /history/{id} has been answered empty (or the lag runs out): deterministic."""
        if self.history_lag_s <= 0:
            await asyncio.sleep(0)
            return
        ev = self._history_probed.setdefault(prompt_id, asyncio.Event())
        try:
            await asyncio.wait_for(ev.wait(), self.history_lag_s)
        except asyncio.TimeoutError:
            pass
        finally:
            self._history_probed.pop(prompt_id, None)

    def _apply_flags(self) -> None:
        flags, self._flags = self._flags, {}
        if flags.get("free_memory") and self.executor is not None:
            self.executor.reset()

    # ------------------------------------------------------------ HTTP

    @web.middleware
    async def _record_mw(self, request: web.Request, handler):
        path = request.path
        if path.startswith("/api/"):
            path = path[4:]
        body = None
        if request.method == "POST" and request.content_type == "application/json":
            try:
                body = json.loads(await request.read() or b"null")
            except ValueError:
                body = None
        if self.record_requests:
            self.requests.append(RecordedRequest(request.method, path, dict(request.query), body,
                                                 {k: v for k, v in request.headers.items()}))
        status = self.faults.http_status.get(path)
        if status is not None:
            return web.Response(status=status, text=f"{status}: injected by ComfyDouble")
        return await handler(request)

    def _add_routes(self, app: web.Application) -> None:
        routes = [
            ("GET", "/ws", self._ws),
            ("GET", "/", self._root),
            ("GET", "/embeddings", self._embeddings),
            ("GET", "/models", self._models),
            ("GET", "/models/{folder}", self._models_folder),
            ("GET", "/extensions", self._extensions),
            ("POST", "/upload/image", self._upload_image),
            ("GET", "/view", self._view),
            ("GET", "/system_stats", self._system_stats),
            ("GET", "/features", self._features),
            ("GET", "/prompt", self._get_prompt),
            ("GET", "/object_info", self._object_info),
            ("GET", "/object_info/{node_class}", self._object_info_node),
            ("GET", "/history", self._get_history),
            ("GET", "/history/{prompt_id}", self._get_history_id),
            ("GET", "/queue", self._get_queue),
            ("POST", "/prompt", self._post_prompt),
            ("POST", "/queue", self._post_queue),
            ("POST", "/interrupt", self._post_interrupt),
            ("POST", "/free", self._post_free),
            ("POST", "/history", self._post_history),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            if path != "/":
                app.router.add_route(method, "/api" + path, handler)

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="<html><body>ComfyUI test double</body></html>", content_type="text/html")

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = ws
        self.sockets_metadata[sid] = {"feature_flags": {}}
        try:
            await ws.send_json({"type": "status", "data": {"status": self.queue_info(), "sid": sid}})
            if self.client_id == sid and self.last_node_id is not None:
                await ws.send_json({"type": "executing", "data": {"node": self.last_node_id}})
            first = True
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                        if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                            self.sockets_metadata[sid]["feature_flags"] = data.get("data", {})
                            await ws.send_json({"type": "feature_flags", "data": dict(SERVER_FEATURES)})
                        first = False
                    except ValueError:
                        pass
        finally:
            if self.sockets.get(sid) is ws:
                self.sockets.pop(sid, None)
                self.sockets_metadata.pop(sid, None)
        return ws

    async def _embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([os.path.splitext(n)[0] for n in self.folders.model_files("embeddings")])

    async def _models(self, request: web.Request) -> web.Response:
        extra = [p.name for p in sorted(self.folders.models.iterdir()) if p.is_dir() and p.name not in MODEL_FOLDERS]
        return web.json_response(MODEL_FOLDERS + extra)

    async def _models_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if not (self.folders.models / folder).is_dir():
            return web.Response(status=404)
        return web.json_response(self.folders.model_files(folder))

    async def _extensions(self, request: web.Request) -> web.Response:
        return web.json_response([])

    def _dir_by_type(self, kind: str | None) -> Path | None:
        return {"input": self.folders.input, "output": self.folders.output, "temp": self.folders.temp}.get(kind or "input")

    async def _upload_image(self, request: web.Request) -> web.Response:
        if self.faults.upload_status is not None:
            if self.faults.upload_failures is None or self.faults.upload_failures > 0:
                if self.faults.upload_failures is not None:
                    self.faults.upload_failures -= 1
                return web.Response(status=self.faults.upload_status, text="upload failed (injected)")
            self.faults.upload_status = None
        post = await request.post()
        image = post.get("image")
        overwrite = post.get("overwrite")
        kind = post.get("type") or "input"
        upload_dir = self._dir_by_type(str(kind))
        if upload_dir is None:
            raise RuntimeError(f"unknown upload type {kind!r}")  # ComfyUI fails the same way: a 500
        if image is None or not hasattr(image, "file"):
            return web.Response(status=400)
        filename = image.filename
        if not filename:
            return web.Response(status=400)
        subfolder = str(post.get("subfolder", ""))
        folder = Path(os.path.join(upload_dir, os.path.normpath(subfolder)))
        filepath = Path(os.path.abspath(folder / filename))
        if os.path.commonpath((str(upload_dir), str(filepath))) != str(upload_dir):
            return web.Response(status=400)
        data = image.file.read()

        def store() -> str:
            name = filename
            path = filepath
            folder.mkdir(parents=True, exist_ok=True)
            stem, ext = os.path.splitext(name)
            if not (overwrite is not None and str(overwrite) in ("true", "1")):
                i = 1
                while path.exists():
                    if hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest():
                        return name  # same name, same bytes: not stored twice
                    name = f"{stem} ({i}){ext}"
                    path = folder / name
                    i += 1
            path.write_bytes(data)
            return name

        name = await asyncio.to_thread(store)
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    async def _view(self, request: web.Request) -> web.StreamResponse:
        q = request.rel_url.query
        if "filename" not in q:
            return web.Response(status=404)
        filename = q["filename"]
        base: Path | None = None
        for suffix, d in (("[output]", self.folders.output), ("[input]", self.folders.input), ("[temp]", self.folders.temp)):
            if filename.endswith(suffix):
                filename, base = filename[: -len(suffix) - 1], d
        if not filename:
            return web.Response(status=400)
        if filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        if base is None:
            base = self._dir_by_type(q.get("type", "output"))
        if base is None:
            return web.Response(status=400)
        if "subfolder" in q:
            full = os.path.join(base, q["subfolder"])
            if os.path.commonpath((os.path.abspath(full), str(base))) != str(base):
                return web.Response(status=403)
            base = Path(full)
        filename = os.path.basename(filename)
        file = Path(base) / filename
        if file.is_file():
            ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
            if ctype in {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}:
                ctype = "application/octet-stream"
            return web.FileResponse(file, headers={"Content-Disposition": f'filename="{filename}"', "Content-Type": ctype})
        return web.Response(status=404)

    async def _system_stats(self, request: web.Request) -> web.Response:
        total = 25276514304
        return web.json_response({
            "system": {
                "os": os.name, "ram_total": total, "ram_free": total - 2 * 1024**3, "comfyui_version": "0.3.64",
                "required_frontend_version": "1.27.10", "installed_templates_version": "0.1.95",
                "required_templates_version": "0.1.95", "python_version": sys.version,
                "pytorch_version": "2.14.1+cu130", "embedded_python": False,
                "argv": ["main.py", "--listen", self._host, "--port", str(self._port), "--comfy-double"],
            },
            "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": total, "vram_free": total - 2 * 1024**3,
                         "torch_vram_total": total, "torch_vram_free": total - 2 * 1024**3}],
        })

    async def _features(self, request: web.Request) -> web.Response:
        return web.json_response(dict(SERVER_FEATURES))

    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue_info())

    async def _object_info(self, request: web.Request) -> web.Response:
        return web.json_response({name: d.info(self.folders) for name, d in self.library.items()})

    async def _object_info_node(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        out = {name: self.library[name].info(self.folders)} if name in self.library else {}
        return web.json_response(out)

    async def _get_history(self, request: web.Request) -> web.Response:
        if self.faults.history_delay_s:
            await asyncio.sleep(self.faults.history_delay_s)
        q = request.rel_url.query
        max_items = int(q["max_items"]) if "max_items" in q else None
        offset = int(q["offset"]) if "offset" in q else -1
        assert self.queue is not None
        return web.json_response(self.queue.get_history(max_items=max_items, offset=offset))

    async def _get_history_id(self, request: web.Request) -> web.Response:
        if self.faults.history_delay_s:
            await asyncio.sleep(self.faults.history_delay_s)
        pid = request.match_info["prompt_id"]
        assert self.queue is not None
        out = self.queue.get_history(prompt_id=pid)
        if not out and pid in self._history_probed:
            self._history_probed[pid].set()
        return web.json_response(out)

    async def _get_queue(self, request: web.Request) -> web.Response:
        assert self.queue is not None
        return web.json_response({"queue_running": [i.as_list() for i in self.queue.running.values()],
                                  "queue_pending": [i.as_list() for i in self.queue.pending]})

    async def _post_prompt(self, request: web.Request) -> web.Response:
        json_data = await request.json()  # not JSON: aiohttp's own 500, as in ComfyUI
        if "number" in json_data:
            number: float = float(json_data["number"])
        else:
            number = self.number
            if json_data.get("front"):
                number = -number
            self.number += 1
        if "prompt" not in json_data:
            return web.json_response({"error": {"type": "no_prompt", "message": "No prompt provided",
                                                "details": "No prompt provided", "extra_info": {}},
                                      "node_errors": {}}, status=400)
        prompt = json_data["prompt"]
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        ok, error, outputs, node_errors = self._validator.validate(prompt, json_data.get("partial_execution_targets"))
        extra_data = json_data.get("extra_data", {})
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if not ok:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        assert self.queue is not None
        self.queue.put(QueueItem(number, prompt_id, prompt, extra_data, outputs))
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def _post_queue(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        assert self.queue is not None
        if json_data.get("clear"):
            self.queue.wipe()
        for pid in json_data.get("delete", []) or []:
            self.queue.delete(pid)
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.Response:
        try:
            json_data = await request.json()
        except ValueError:
            json_data = {}
        pid = json_data.get("prompt_id") if isinstance(json_data, dict) else None
        assert self.queue is not None
        if not pid or any(i.prompt_id == pid for i in self.queue.running.values()):
            self.interrupt()
        return web.Response(status=200)

    async def _post_free(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        if json_data.get("free_memory"):
            self._flags["free_memory"] = True
        if json_data.get("unload_models"):
            self._flags["unload_models"] = True
        assert self.queue is not None
        if not self.queue.running:
            self._apply_flags()
        return web.Response(status=200)

    async def _post_history(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        assert self.queue is not None
        if json_data.get("clear"):
            self.queue.history = {}
        for pid in json_data.get("delete", []) or []:
            self.queue.history.pop(pid, None)
        return web.Response(status=200)
