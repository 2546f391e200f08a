"""bench/provision.py: our downloader beside aria2c and huggingface_hub, and a no-op provision.

    python bench/provision.py [--size-mib 32] [--rate-mib-s 4] [--connections 8] [--runs 3]

1. A local model host (tests/provision/model_server.py, its own process) limits each
   connection to --rate-mib-s, as Hugging Face's and Civitai's CDNs do per stream. The
   same file is downloaded, each time into a fresh folder, by our downloader with one
   connection and with --connections, by `aria2c -x N` (Debian's aria2, when installed) and
   by huggingface_hub's hf_hub_download (when installed; plain HTTP, see
   bench/download_tools.py); median time and throughput of --runs runs each.
2. Safety, on a local host: whether each tool sends the token to the host a redirect names,
   what a sha256 mismatch leaves at the final name, and how much a cut download fetches
   again when run again (bench/download_tools.py).
3. A machine that already matches its manifest (a ComfyUI checkout, a custom node pack,
   a model of --size-mib, all verified) is provisioned again with `comfy-worker provision`
   (a new process, as start_server.sh runs it): the time a restarted worker pays.
   Target: under 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import download_tools  # noqa: E402  (bench/download_tools.py)

from comfy_bridge.provision.manifest import ModelFile  # noqa: E402
from tests.provision.conftest import make_comfy_repo, make_pack_repo, stub_python  # noqa: E402


def start_host(size_mib: float, rate_mib_s: float) -> tuple[subprocess.Popen, str, str, int]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.provision.model_server", "--size-mib", str(size_mib),
                             "--rate-mib-s", str(rate_mib_s)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url, sha, size = proc.stdout.readline().split()
    return proc, url, sha, int(size)


def noop_provision(root: Path, url: str, sha: str, size: int, runs: int) -> list[float]:
    from tests.provision.conftest import git

    comfy_src, commit = make_comfy_repo(root / "src")
    pack_src, (ref, _) = make_pack_repo(root / "src", "RES4LYF", ["ClownsharKSampler_Beta"], requirements="numpy\n")
    comfy = root / "ComfyUI"
    git(root, "clone", "-q", str(comfy_src), str(comfy))
    py, _ = stub_python(root)
    manifest = root / "manifest.toml"
    manifest.write_text(f"""
[comfyui]
version = "v0.3.64"
commit = "{commit}"
repo = "{comfy_src}"

[[custom_nodes]]
name = "RES4LYF"
repo = "{pack_src}"
ref = "{ref}"
pip = ["kornia"]
provides = ["ClownsharKSampler_Beta"]

[[models]]
url = "{url}"
dest = "checkpoints/model.safetensors"
sha256 = "{sha}"
size = {size}
""")
    cmd = [sys.executable, "-m", "worker.cli", "provision", "--manifest", str(manifest), "--comfyui-path",
           str(comfy), "--python", str(py), "--gpu", "cpu", "--log-level", "WARNING"]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - began)
        assert again.returncode == 0 and "everything matches" in again.stdout, again.stdout + again.stderr
    return times


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=float, default=32)
    p.add_argument("--rate-mib-s", type=float, default=4)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()

    host, url, sha, size = start_host(args.size_mib, args.rate_mib_s)
    try:
        model = ModelFile(url=url, dest="checkpoints/model.safetensors", sha256=sha, size=size)
        mib = size / (1 << 20)
        limit = f"host limited to {args.rate_mib_s} MiB/s per connection" if args.rate_mib_s else "host unthrottled"
        print(f"download of {mib:.0f} MiB, {limit}, "
              f"median of {args.runs} runs:")
        for label, run, n in download_tools.tools(args.connections):
            took = statistics.median([await download_tools.timed(run, model, n) for _ in range(args.runs)])
            print(f"  {label:32s} {took:6.2f} s  {mib / took:6.1f} MiB/s")
        if not download_tools.hub_available():
            print("  huggingface_hub: not installed (pip install huggingface_hub into .venv to compare it)")
        print("safety (token to the host a redirect names; sha256 mismatch; a download cut after 700 kB, run again):")
        for label, token, mismatch, resume in await download_tools.safety(args.connections):
            print(f"  {label}:\n    token to redirect target: {token}\n    wrong sha256: {mismatch}\n"
                  f"    resume: {resume}")

        with tempfile.TemporaryDirectory() as tmp:
            times = noop_provision(Path(tmp), url, sha, size, args.runs)
        print(f"provision with everything present (new process, {args.runs} runs): "
              f"median {statistics.median(times):.2f} s, max {max(times):.2f} s (target < 2 s)")
    finally:
        host.terminate()
        host.wait()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main())
