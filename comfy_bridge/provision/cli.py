"""`comfy-worker provision`: make a machine match models_manifest.toml (or say how it differs).

    comfy-worker provision [--manifest FILE] [--comfyui-path DIR] [--models-dir DIR] [--check]

Installs ComfyUI with comfy-cli when absent, clones each custom node pack at its pinned
commit and installs its requirements with ComfyUI's Python, downloads the models
(several connections per file, several files at once, resumable, sha256-verified;
HF_TOKEN / CIVITAI_TOKEN for gated files). Safe to rerun: what is present and verified is
skipped. `--check` changes nothing and exits 1 when anything is missing or wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import sys
from pathlib import Path

from comfy_bridge import logs
from comfy_bridge.errors import BridgeError
from comfy_bridge.provision.manifest import DEFAULT_MANIFEST, load_manifest
from comfy_bridge.provision.provisioner import STEPS, Options, ProvisionReport, provision


def _default_gpu() -> str:
    if glob.glob("/dev/nvidia[0-9]*") or shutil.which("nvidia-smi"):
        return "nvidia"
    return "cpu"


def add_arguments(p: argparse.ArgumentParser) -> None:
    env = os.environ
    p.add_argument("--manifest", type=Path, default=Path(env.get("COMFY_WORKER_MANIFEST", DEFAULT_MANIFEST)),
                   help="the manifest (default: COMFY_WORKER_MANIFEST or the repository's models_manifest.toml)")
    p.add_argument("--comfyui-path", type=Path, default=Path(env.get("COMFYUI_PATH", "ComfyUI")),
                   help="ComfyUI's folder, installed there when absent (default: COMFYUI_PATH or ./ComfyUI)")
    p.add_argument("--models-dir", type=Path, default=Path(env["COMFY_WORKER_MODELS_DIR"])
                   if env.get("COMFY_WORKER_MODELS_DIR") else None,
                   help="where models go when not in ComfyUI/models, e.g. a Vast volume; ComfyUI is pointed "
                        "at it with extra_model_paths.yaml (default: COMFY_WORKER_MODELS_DIR)")
    p.add_argument("--python", default=None,
                   help="ComfyUI's Python (default: COMFYUI_PYTHON, else <ComfyUI>/.venv, else this one)")
    p.add_argument("--gpu", choices=["nvidia", "cpu", "amd"], default=env.get("COMFY_WORKER_GPU") or None,
                   help="PyTorch flavour for a fresh ComfyUI install (default: nvidia when a GPU is visible)")
    p.add_argument("--cuda-version", default=env.get("COMFY_WORKER_CUDA_VERSION") or None,
                   help="CUDA version of the PyTorch wheels for a fresh install (e.g. 12.8)")
    p.add_argument("--check", action="store_true", help="report what is missing or wrong; change nothing")
    p.add_argument("--only", default=",".join(STEPS),
                   help=f"comma-separated steps to run, of {','.join(STEPS)} (default: all)")
    p.add_argument("--skip-models", action="store_true", help="everything but the models (same as --only "
                                                               "comfyui,custom_nodes)")
    p.add_argument("--rehash", action="store_true", help="re-verify the sha256 of models already verified")
    p.add_argument("--connections", type=int, default=int(env.get("COMFY_WORKER_DOWNLOAD_CONNECTIONS", 8)),
                   help="connections per model file (HTTP Range), default 8")
    p.add_argument("--parallel-files", type=int, default=int(env.get("COMFY_WORKER_DOWNLOAD_FILES", 3)),
                   help="model files downloaded at once, default 3")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--print-benchmark", action="store_true",
                   help="print the manifest's benchmark workflow path and exit (for start_server.sh)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def print_report(report: ProvisionReport, out=None) -> None:
    out = out or sys.stdout
    verb = "check" if report.check_only else "provision"
    for item in report.items:
        mark = "ok " if item.good else "!! "
        detail = f": {item.detail}" if item.detail else ""
        print(f"{mark}{item.step:<13} {item.name:<40} {item.status}{detail}", file=out)
    state = "everything matches the manifest" if report.ok else "the machine differs from the manifest"
    print(f"{verb}: {state} ({report.seconds:.2f}s)", file=out)


def run(args: argparse.Namespace) -> int:
    logs.setup(args.log_level)
    log = logs.get("comfy_bridge.provision")
    steps = ("comfyui", "custom_nodes") if args.skip_models else tuple(s.strip() for s in args.only.split(",") if s)
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        print(f"provision: unknown step(s) {', '.join(unknown)}; known: {', '.join(STEPS)}", file=sys.stderr)
        return 2
    try:
        manifest = load_manifest(args.manifest)
        if args.print_benchmark:
            path = manifest.benchmark_path()
            print(path if path else "")
            return 0
        opts = Options(comfyui_path=args.comfyui_path.absolute(),
                       models_dir=args.models_dir.absolute() if args.models_dir else None,
                       python=args.python, gpu=args.gpu or _default_gpu(), cuda_version=args.cuda_version,
                       steps=steps, check_only=args.check, rehash=args.rehash,
                       connections=max(1, args.connections), parallel_files=max(1, args.parallel_files))
        report = asyncio.run(provision(manifest, opts))
    except BridgeError as exc:
        log.error("%s", exc.message, extra={"fields": {"error": exc.to_dict()}})
        print(f"provision failed: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("provision interrupted: rerun to resume (partial downloads are kept)", file=sys.stderr)
        return 130
    if args.json:
        print(report.model_dump_json(indent=1))
    else:
        print_report(report)
    return 0 if report.ok else 1
