#!/usr/bin/env bash
# Everything measured on a GPU box in one go, ending with one table (issue 14): ComfyUI's
# 10-second pause with and without the gc.freeze pack (bench/comfy_pauses.py); bridge
# overhead and res_2s vs euler (bench/gpu_measure.py); units against measured time for
# SD1.5 512² / SDXL 1024², euler / res_2s, batch 1 / 4 (bench/gpu_units.py); the cold
# start of `comfy-worker serve` (its `ready` line); delivery to S3 at saturation
# (bench/pipeline.py --s3, when SeaweedFS's `weed` is installed). Made for the device
# tool's GPU machine (Python 3.12 with torch, no network), run from the repo root:
#
#   bash bench/gpu_check.sh            # on the GPU machine, with `carry: [".gpu"]`
#
# .gpu/ (git-ignored) holds ComfyUI.tar.xz (ComfyUI v0.3.64 + RES4LYF code, or a
# ComfyUI/ folder) and whl/ (cp312 wheels of what the machine lacks). Steps: install the
# wheels into $SITE, unpack ComfyUI, build a random-weight SDXL checkpoint on the GPU
# (bench/gpu_ckpt.py; CKPT=<file> links an existing one instead), start ComfyUI and the
# bridge (bench/gpu_bridge.py), measure, stop both. Logs and results go to $OUT.
#
# Knobs (env): PY, BRIDGE_PY (default $PY), SITE, SKIP_WHEELS=1, COMFY_PYTHONPATH,
# BRIDGE_PYTHONPATH, COMFY_ARGS (e.g. --cpu), CKPT, ARCH (sdxl), MEASURE_ARGS, WORK,
# PAUSE_SECONDS (60), UNITS_RUNS (3), SKIP="pauses units cold s3" (any of them).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
OUT=${OUT:-/tmp/gpu_check_out}
WORK=${WORK:-/tmp/gpu_check_work}
SITE=${SITE:-/tmp/site}
PY=${PY:-python3}
BRIDGE_PY=${BRIDGE_PY:-$PY}
ARCH=${ARCH:-sdxl}
COMFY_PORT=${COMFY_PORT:-18188}
BRIDGE_PORT=${BRIDGE_PORT:-18288}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
log() { echo "[gpu_check +${SECONDS}s] $*"; }
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
}
trap cleanup EXIT
fail() { log "FAILED: $*"; [ -f "$OUT/comfyui.log" ] && tail -n 40 "$OUT/comfyui.log"; [ -f "$OUT/bridge.log" ] && tail -n 20 "$OUT/bridge.log"; exit 1; }

wait_http() {  # url, seconds, pid to watch
  "$BRIDGE_PY" - "$1" "$2" "$3" <<'EOF'
import os, sys, time, urllib.request
url, limit, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
end = time.monotonic() + limit
while time.monotonic() < end:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("process exited")
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.2)
sys.exit("timed out")
EOF
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/[gpu] /'
"$PY" -c 'import sys, torch; print("[py]", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())'

if [ -z "${SKIP_WHEELS:-}" ] && [ -d .gpu/whl ]; then
  log "installing the wheels of .gpu/whl into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu/whl/*.whl \
    >"$OUT/pip.log" 2>&1 || { cat "$OUT/pip.log"; fail "wheel install"; }
fi
export PYTHONPATH="${COMFY_PYTHONPATH:-$SITE:$ROOT}"
BRIDGE_PYTHONPATH=${BRIDGE_PYTHONPATH:-$SITE:$ROOT}

if [ -f .gpu/ComfyUI.tar.xz ]; then
  rm -rf "$WORK/ComfyUI"
  tar -C "$WORK" -xJf .gpu/ComfyUI.tar.xz || fail "unpack ComfyUI"
  CUI=$WORK/ComfyUI
else
  CUI=${COMFYUI_DIR:-$ROOT/.gpu/ComfyUI}
fi
[ -f "$CUI/main.py" ] || fail "no ComfyUI at $CUI"
mkdir -p "$CUI/models/checkpoints" "$WORK/fe"
echo '<!doctype html><title>no frontend</title>' >"$WORK/fe/index.html"

SKIP=${SKIP:-}
want() { case " $SKIP " in *" $1 "*) return 1 ;; *) return 0 ;; esac; }
build_ckpt() { # arch
  [ -f "$CUI/models/checkpoints/$1_random.safetensors" ] && return 0
  log "building a random $1 checkpoint on the GPU"
  if ! "$PY" bench/gpu_ckpt.py --comfyui-path "$CUI" --out "$CUI/models/checkpoints" --arch "$1" --device cuda \
      2>"$OUT/ckpt-$1.err"; then
    tail -n 15 "$OUT/ckpt-$1.err"
    log "GPU build failed; falling back to tools/make_checkpoints.py on the CPU (slow)"
    "$PY" tools/make_checkpoints.py --comfyui-path "$CUI" --out "$CUI/models/checkpoints" --arch "$1" \
      >>"$OUT/ckpt-$1.err" 2>&1 || { tail -n 20 "$OUT/ckpt-$1.err"; fail "checkpoint $1"; }
  fi
}
CKPT_FILE=${ARCH}_random.safetensors
if [ -n "${CKPT:-}" ]; then
  CKPT_FILE=$(basename "$CKPT")
  ln -sf "$CKPT" "$CUI/models/checkpoints/$CKPT_FILE"
else
  build_ckpt "$ARCH"
fi
if want units; then build_ckpt sd15; fi

if want pauses; then
  log "ComfyUI's pauses, stock vs gc.freeze pack (${PAUSE_SECONDS:-60} s + 20 s each)"
  PYTHONPATH=$BRIDGE_PYTHONPATH "$BRIDGE_PY" bench/comfy_pauses.py --comfyui-path "$CUI" --comfyui-python "$PY" \
    --comfy-args "${COMFY_ARGS:-}" --seconds "${PAUSE_SECONDS:-60}" --busy-seconds 20 \
    --json-out "$OUT/pauses.json" 2>&1 | tee "$OUT/pauses.txt"
fi
# The ComfyUI below loads the gc.freeze pack the way the README tells external users to.
FREEZE_FLAGS=$(PYTHONPATH=$BRIDGE_PYTHONPATH "$BRIDGE_PY" -m comfy_bridge.comfyui.gc_freeze "$WORK" 2>/dev/null \
  | sed 's/^add to ComfyUI.s command line: //')

log "starting ComfyUI on :$COMFY_PORT"
# shellcheck disable=SC2086  # COMFY_ARGS is a list of flags
# shellcheck disable=SC2086  # FREEZE_FLAGS: the flag and its file
"$PY" "$CUI/main.py" --listen 127.0.0.1 --port "$COMFY_PORT" --front-end-root "$WORK/fe" \
  --disable-auto-launch ${COMFY_ARGS:-} $FREEZE_FLAGS >"$OUT/comfyui.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$COMFY_PORT/system_stats" 300 "${PIDS[0]}" || fail "ComfyUI did not answer"
log "ComfyUI answers; import failures: $(grep -c 'IMPORT FAILED' "$OUT/comfyui.log")"
grep -E 'IMPORT FAILED|Cannot import|Error importing|Device:|Total VRAM' "$OUT/comfyui.log" | head -n 12

log "starting the bridge on :$BRIDGE_PORT"
PYTHONPATH=$BRIDGE_PYTHONPATH "$BRIDGE_PY" bench/gpu_bridge.py --comfyui-url "http://127.0.0.1:$COMFY_PORT" \
  --comfyui-path "$CUI" --port "$BRIDGE_PORT" >"$OUT/bridge.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$BRIDGE_PORT/health" 60 "${PIDS[1]}" || fail "bridge did not answer"

log "measuring"
# shellcheck disable=SC2086  # MEASURE_ARGS is a list of flags
PYTHONPATH=$BRIDGE_PYTHONPATH "$BRIDGE_PY" bench/gpu_measure.py --bridge-url "http://127.0.0.1:$BRIDGE_PORT" \
  --comfyui-url "http://127.0.0.1:$COMFY_PORT" --ckpt "$CKPT_FILE" --json-out "$OUT/gpu_measure.json" \
  ${MEASURE_ARGS:-} 2>&1 | tee "$OUT/measure.txt"
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] || fail "gpu_measure.py exited $rc"
grep -E 'Prompt executed|Model .* loaded|loaded completely' "$OUT/comfyui.log" | tail -n 3

if want units; then
  log "units against measured time"
  PYTHONPATH=$BRIDGE_PYTHONPATH "$BRIDGE_PY" bench/gpu_units.py --bridge-url "http://127.0.0.1:$BRIDGE_PORT" \
    --models-dir "$CUI/models" --sd15 sd15_random.safetensors --sdxl "$CKPT_FILE" --runs "${UNITS_RUNS:-3}" \
    --json-out "$OUT/units.json" 2>&1 | tee "$OUT/units.txt"
fi
cleanup
PIDS=()

if want cold; then
  log "cold start: comfy-worker serve --local --comfyui-path (fresh state)"
  "$BRIDGE_PY" -c 'import json, sys; sys.path.insert(0, "bench"); from gpu_measure import graph
print(json.dumps(graph(sys.argv[1], 1024, 20, "euler", "normal", 7.0)))' "$CKPT_FILE" >"$WORK/bench_sdxl.json"
  rm -rf "$WORK/cold-state"
  COMFY_BRIDGE_COMFYUI_EXTRA_ARGS="--front-end-root $WORK/fe ${COMFY_ARGS:-}" PYTHONPATH=$BRIDGE_PYTHONPATH \
    COMFY_WORKER_T0=$(date +%s.%N) "$BRIDGE_PY" -m worker serve --local --comfyui-path "$CUI" --comfyui-python "$PY" \
    --comfyui-port 0 --port 0 --router-port 0 --benchmark-workflow "$WORK/bench_sdxl.json" \
    --state-dir "$WORK/cold-state" >"$OUT/cold.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 600); do
    grep -q '"msg": "ready"' "$OUT/cold.log" && break
    kill -0 "${PIDS[0]}" 2>/dev/null || break
    sleep 0.5
  done
  grep '"msg": "ready"' "$OUT/cold.log" | tail -n 1 | tee "$OUT/cold_ready.json"
  cleanup
  PIDS=()
fi

if want s3; then
  if PYTHONPATH=$BRIDGE_PYTHONPATH "$BRIDGE_PY" -c 'from tests.io.seaweed import weed_binary; import sys; sys.exit(weed_binary() is None)'; then
    log "delivery to S3 at saturation (SeaweedFS), stock vs gc.freeze pack"
    PYTHONPATH=$BRIDGE_PYTHONPATH "$BRIDGE_PY" bench/pipeline.py --s3 --comfyui-path "$CUI" --comfyui-python "$PY" \
      --comfy-args "${COMFY_ARGS:-}" --size 1024 --requests 30 --repeat 3 --json-out "$OUT/pipeline.json" 2>&1 \
      | tee "$OUT/pipeline.txt"
  else
    log "no SeaweedFS (weed) here: the S3 pipeline is skipped"
  fi
fi

PYTHONPATH=$BRIDGE_PYTHONPATH "$BRIDGE_PY" bench/gpu_table.py "$OUT"
log "done"
