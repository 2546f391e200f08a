"""start_server.sh in a temporary root, with and without Vast's environment.

`comfy-worker` and the Python that gets the TLS certificate are stubs on PATH that record
their argv; the script's own logic (mode detection, checks, provisioning, restart,
logging) is what runs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.provision.conftest import REPO_ROOT, read_calls, write_stub

SCRIPT = REPO_ROOT / "start_server.sh"
VAST = {"CONTAINER_ID": "4242", "REPORT_ADDR": "https://run.vast.ai", "PUBLIC_IPADDR": "203.0.113.7",
        "WORKER_PORT": "3000", "VAST_TCP_PORT_3000": "41234", "MASTER_TOKEN": "m4ster-t0ken"}


@pytest.fixture
def root(tmp_path):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    calls = tmp_path / "calls.jsonl"
    write_stub(stubs / "comfy-worker", f"""
        import json, os, sys, time
        argv = sys.argv[1:]
        with open({str(calls)!r}, "a") as f:
            f.write(json.dumps({{"prog": "comfy-worker", "argv": argv, "cwd": os.getcwd(), "pid": os.getpid()}})
                    + "\\n")
        if argv[:1] == ["provision"]:
            if "--print-benchmark" in argv:
                print("/opt/comfy-worker/workflows/benchmark_sdxl.json")
                sys.exit(0)
            print("provision: everything matches the manifest")
            sys.exit(int(os.environ.get("STUB_PROVISION_RC", "0")))
        if argv[:1] == ["serve"]:
            print("serving", flush=True)
            if os.environ.get("STUB_SERVE_READY"):
                open(os.environ["STUB_SERVE_READY"], "w").write(str(os.getpid()))
            time.sleep(float(os.environ.get("STUB_SERVE_SLEEP", "0")))
        """)
    write_stub(stubs / "python-stub", f"""
        import json, os, sys
        argv = sys.argv[1:]
        with open({str(calls)!r}, "a") as f:
            f.write(json.dumps({{"prog": "python", "argv": argv}}) + "\\n")
        out = argv[argv.index("--out-dir") + 1]
        os.makedirs(out, exist_ok=True)
        for n in ("instance.crt", "instance.key"):
            open(os.path.join(out, n), "w").write("-----BEGIN CERTIFICATE-----\\n")
        """)
    env = {
        "PATH": f"{stubs}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "COMFY_WORKER_HOME": str(REPO_ROOT),
        "COMFYUI_PATH": str(tmp_path / "ComfyUI"),
        "COMFY_WORKER_MANIFEST": str(REPO_ROOT / "models_manifest.toml"),
        "COMFY_WORKER_STATE_DIR": str(tmp_path / "state"),
        "COMFY_WORKER_LOG_DIR": str(tmp_path / "log"),
        "COMFY_WORKER_SSL_DIR": str(tmp_path / "ssl"),
        "COMFY_WORKER_PYTHON": str(stubs / "python-stub"),
        "HF_TOKEN": "hf_very_secret_token",
    }
    return {"tmp": tmp_path, "env": env, "calls": calls}


def start(root, extra: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], env={**root["env"], **(extra or {})}, capture_output=True,
                          text=True, timeout=60, **kw)


def calls(root, prog: str = "comfy-worker") -> list[list[str]]:
    return [c["argv"] for c in read_calls(root["calls"]) if c["prog"] == prog]


def test_local_mode_provisions_then_serves_with_the_emulator(root):
    done = start(root)

    assert done.returncode == 0, done.stdout + done.stderr
    provision, bench, serve = calls(root)
    assert provision == ["provision", "--manifest", root["env"]["COMFY_WORKER_MANIFEST"],
                         "--comfyui-path", root["env"]["COMFYUI_PATH"], "--skip-models"]
    # The models are verified by the worker while ComfyUI starts (worker/provision_overlap.py).
    assert bench[-1] == "--print-benchmark"
    assert serve[:5] == ["serve", "--port", "3000", "--state-dir", root["env"]["COMFY_WORKER_STATE_DIR"]]
    assert "--local" in serve and serve[serve.index("--router-port") + 1] == "8081"
    assert serve[serve.index("--comfyui-path") + 1] == root["env"]["COMFYUI_PATH"]
    assert serve[serve.index("--benchmark-workflow") + 1].endswith("benchmark_sdxl.json")
    assert serve[serve.index("--provision-models") + 1] == root["env"]["COMFY_WORKER_MANIFEST"]
    serve_call = read_calls(root["calls"])[-1]
    assert serve_call["cwd"] == root["env"]["COMFY_WORKER_STATE_DIR"]
    log = (root["tmp"] / "log/start_server.log").read_text()
    assert "mode local" in log and "serving" in log  # the worker's own output lands in the log too
    assert "mode local" in done.stdout  # and on stdout, which Vast's console and `docker logs` show
    assert "hf_very_secret_token" not in log + done.stdout + done.stderr


def test_vast_mode_serves_without_emulator_and_gets_a_certificate(root):
    done = start(root, {**VAST, "USE_SSL": "true"})

    assert done.returncode == 0, done.stdout + done.stderr
    (cert,) = calls(root, "python")
    assert cert[0].endswith("docker/vast_cert.py")
    assert cert[1:] == ["--instance-id", "4242", "--out-dir", str(root["tmp"] / "ssl")]
    serve = calls(root)[-1]
    assert serve[0] == "serve" and "--local" not in serve and "--router-port" not in serve
    assert "Vast: container 4242, public 203.0.113.7:41234" in done.stdout
    assert "m4ster-t0ken" not in done.stdout

    again = start(root, {**VAST, "USE_SSL": "true"})
    assert again.returncode == 0 and len(calls(root, "python")) == 1  # certificate kept
    assert "TLS certificate present" in again.stdout


def test_models_on_a_new_volume_are_provisioned_before_comfyui_starts(root):
    done = start(root, {"COMFY_WORKER_MODELS_DIR": str(root["tmp"] / "volume")})
    assert done.returncode == 0, done.stdout + done.stderr
    provision, _, serve = calls(root)
    assert "--skip-models" not in provision and "--provision-models" not in serve  # extra_model_paths.yaml first


def test_vast_mode_names_missing_variables(root):
    env = {k: v for k, v in VAST.items() if k != "VAST_TCP_PORT_3000"}
    done = start(root, env)
    assert done.returncode == 1
    assert "Vast did not set VAST_TCP_PORT_3000" in done.stdout
    assert calls(root) == []


def test_failed_provisioning_does_not_start_the_worker(root):
    done = start(root, {"STUB_PROVISION_RC": "1"})
    assert done.returncode == 1
    assert "provisioning failed" in done.stdout
    assert [c[0] for c in calls(root)] == ["provision"]


def test_external_comfyui_is_not_provisioned(root):
    done = start(root, {"COMFYUI_URL": "http://127.0.0.1:18188"})
    assert done.returncode == 0
    serve = calls(root)[-1]
    assert not any(c[0] == "provision" and "--print-benchmark" not in c for c in calls(root))
    assert serve[serve.index("--comfyui-url") + 1] == "http://127.0.0.1:18188" and "--comfyui-path" not in serve


def test_restart_stops_the_previous_worker(root, tmp_path):
    ready = tmp_path / "serve.pid"
    first = subprocess.Popen(["bash", str(SCRIPT)], env={**root["env"], "STUB_SERVE_SLEEP": "120",
                                                         "STUB_SERVE_READY": str(ready)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # The stub writes its pid once it serves; wait for that (bounded), not for a fixed time.
        for _ in range(600):
            if ready.exists() and ready.read_text():
                break
            if first.poll() is not None:
                pytest.fail("the first start exited early")
            subprocess.run(["sleep", "0.05"])
        assert int(ready.read_text()) == first.pid  # exec: the worker is the script's own process

        second = start(root)

        assert second.returncode == 0
        assert f"stopping the previous worker (pid {first.pid})" in second.stdout
        assert first.wait(timeout=30) == -signal.SIGTERM
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_script_is_shellcheck_clean():
    shellcheck = Path(sys.executable).with_name("shellcheck")
    exe = str(shellcheck) if shellcheck.exists() else "shellcheck"
    done = subprocess.run([exe, str(SCRIPT), str(REPO_ROOT / ".ci/services.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_dockerfile_is_hadolint_clean():
    hadolint = Path(sys.executable).with_name("hadolint")
    exe = str(hadolint) if hadolint.exists() else "hadolint"
    done = subprocess.run([exe, str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_vast_cert_helper_against_a_local_signer(tmp_path):
    """docker/vast_cert.py makes a key and CSR and stores what the signer returns."""
    import http.server
    import threading

    seen: dict[str, object] = {}

    class Signer(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen["path"] = self.path
            seen["csr"] = self.rfile.read(int(self.headers["Content-Length"]))
            body = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Signer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done = subprocess.run([sys.executable, str(REPO_ROOT / "docker/vast_cert.py"), "--instance-id", "77",
                               "--out-dir", str(tmp_path), "--sign-url",
                               f"http://127.0.0.1:{server.server_address[1]}/sign_cert/"],
                              capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert seen["path"] == "/sign_cert/?instance_id=77"
    assert b"BEGIN CERTIFICATE REQUEST" in seen["csr"]  # type: ignore[operator]
    assert (tmp_path / "instance.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert oct((tmp_path / "instance.key").stat().st_mode & 0o777) == "0o600"
    assert json.dumps(seen, default=str)  # recorded
