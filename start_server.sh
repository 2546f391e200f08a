#!/usr/bin/env bash
# start_server.sh: the image's entrypoint, the same on Vast.ai and under a plain `docker run`.
#
#   On Vast (CONTAINER_ID and REPORT_ADDR set by Vast): the PyWorker reports to Vast's
#   autoscaler; WORKER_PORT, PUBLIC_IPADDR, VAST_TCP_PORT_<WORKER_PORT>, MASTER_TOKEN,
#   USE_SSL (then the instance certificate is signed by Vast first) come from Vast.
#   Anywhere else: local mode, with a Vast router emulator on loopback
#   (`comfy-worker serve --local`); call it with `comfy-worker call --router ...`.
#
# Steps: provision ComfyUI and custom nodes from the manifest (idempotent: a restart
# re-checks in about a second), then exec the worker, which verifies (or downloads) the
# models while ComfyUI starts (`serve --provision-models`) and is ready only once they are.
# With COMFY_WORKER_MODELS_DIR and no extra_model_paths.yaml yet, models are provisioned
# first (ComfyUI reads that file at start). The cold-start timeline (the `ready` log line,
# /metrics) starts here: COMFY_WORKER_T0 and COMFY_WORKER_PROVISIONED_AT are exported. Output goes to the container's stdout (what Vast's console shows) and to
# $COMFY_WORKER_LOG_DIR/start_server.log. Safe to run again in the same container: a
# previous worker started by this script is stopped first.
#
# Settings (all optional):
#   COMFYUI_PATH            ComfyUI's folder (/opt/ComfyUI in the image)
#   COMFYUI_URL             use a ComfyUI that runs elsewhere; nothing is provisioned
#   COMFY_WORKER_MODELS_DIR models on a volume (e.g. a Vast volume): ComfyUI is pointed at it
#   COMFY_WORKER_PROVISION  0 skips provisioning (everything baked into the image)
#   COMFY_WORKER_MODE       vast | local, to override the detection
#   COMFY_WORKER_ROUTER_PORT  local mode: the emulator's port (default 8081)
#   HF_TOKEN, CIVITAI_TOKEN   for gated model files (never printed)
set -Eeuo pipefail
COMFY_WORKER_T0=${COMFY_WORKER_T0:-$(date +%s.%N)}
export COMFY_WORKER_T0

COMFY_WORKER_HOME=${COMFY_WORKER_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
COMFYUI_PATH=${COMFYUI_PATH:-/opt/ComfyUI}
COMFYUI_URL=${COMFYUI_URL:-}
COMFY_WORKER_BIN=${COMFY_WORKER_BIN:-comfy-worker}
COMFY_WORKER_PYTHON=${COMFY_WORKER_PYTHON:-python3}
COMFY_WORKER_MANIFEST=${COMFY_WORKER_MANIFEST:-$COMFY_WORKER_HOME/models_manifest.toml}
COMFY_WORKER_STATE_DIR=${COMFY_WORKER_STATE_DIR:-/var/lib/comfy-worker}
COMFY_WORKER_LOG_DIR=${COMFY_WORKER_LOG_DIR:-/var/log/comfy-worker}
COMFY_WORKER_PROVISION=${COMFY_WORKER_PROVISION:-1}
COMFY_WORKER_SSL_DIR=${COMFY_WORKER_SSL_DIR:-/etc}
WORKER_PORT=${WORKER_PORT:-3000}
USE_SSL=${USE_SSL:-false}
export COMFYUI_PATH COMFY_WORKER_MANIFEST COMFY_WORKER_STATE_DIR WORKER_PORT USE_SSL

mkdir -p "$COMFY_WORKER_STATE_DIR" "$COMFY_WORKER_LOG_DIR"
log_file="$COMFY_WORKER_LOG_DIR/start_server.log"
# Keep the file bounded across restarts: the previous run's log becomes .1.
if [ -f "$log_file" ] && [ "$(stat -c %s "$log_file")" -gt $((50 * 1024 * 1024)) ]; then
  mv -f "$log_file" "$log_file.1"
fi
# Everything from here on goes to stdout (Vast's console, `docker logs`) and the file.
exec > >(tee -a "$log_file") 2>&1

say() { printf '%s start_server: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }
die() {
  say "ERROR: $*"
  exit 1
}
trap 'die "line $LINENO: \"$BASH_COMMAND\" failed"' ERR

mode=${COMFY_WORKER_MODE:-}
if [ -z "$mode" ]; then
  if [ -n "${CONTAINER_ID:-}" ] && [ -n "${REPORT_ADDR:-}" ]; then mode=vast; else mode=local; fi
fi
case "$mode" in vast | local) ;; *) die "COMFY_WORKER_MODE must be vast or local, not '$mode'" ;; esac
say "mode $mode, worker port $WORKER_PORT, ComfyUI ${COMFYUI_URL:-at $COMFYUI_PATH}"

if [ "$mode" = vast ]; then
  missing=()
  for var in CONTAINER_ID REPORT_ADDR PUBLIC_IPADDR "VAST_TCP_PORT_$WORKER_PORT"; do
    [ -n "${!var:-}" ] || missing+=("$var")
  done
  [ ${#missing[@]} -eq 0 ] || die "Vast did not set ${missing[*]}: expose port $WORKER_PORT in the template (-p $WORKER_PORT:$WORKER_PORT)"
  public_port_var="VAST_TCP_PORT_$WORKER_PORT"
  say "Vast: container $CONTAINER_ID, public $PUBLIC_IPADDR:${!public_port_var}, autoscaler $REPORT_ADDR, ssl $USE_SSL"
fi

# A previous worker started by this script in this container (a re-run of the entrypoint).
pid_file="$COMFY_WORKER_STATE_DIR/worker.pid"
alive() { # running, not merely a zombie waiting for its parent
  kill -0 "$1" 2>/dev/null && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]
}
if [ -f "$pid_file" ]; then
  old=$(cat "$pid_file" 2>/dev/null || true)
  if [ -n "$old" ] && [ "$old" != "$$" ] && alive "$old" \
    && tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null | grep -q "serve"; then
    say "stopping the previous worker (pid $old)"
    kill -TERM "$old" 2>/dev/null || true
    for _ in $(seq 1 150); do
      alive "$old" || break
      sleep 0.2
    done
    if alive "$old"; then kill -KILL "$old" 2>/dev/null || true; fi
  fi
  rm -f "$pid_file"
fi

# Vast serves the worker over TLS when USE_SSL=true: its console signs this instance's key.
if [ "$mode" = vast ] && [ "$USE_SSL" = true ]; then
  if [ -s "$COMFY_WORKER_SSL_DIR/instance.crt" ] && [ -s "$COMFY_WORKER_SSL_DIR/instance.key" ]; then
    say "TLS certificate present"
  else
    say "getting the TLS certificate signed by Vast"
    "$COMFY_WORKER_PYTHON" "$COMFY_WORKER_HOME/docker/vast_cert.py" --instance-id "$CONTAINER_ID" \
      --out-dir "$COMFY_WORKER_SSL_DIR" || die "could not get a TLS certificate (USE_SSL=true)"
  fi
fi

serve=(serve --port "$WORKER_PORT" --state-dir "$COMFY_WORKER_STATE_DIR")
if [ -n "$COMFYUI_URL" ]; then
  say "ComfyUI runs elsewhere ($COMFYUI_URL): nothing to provision"
  serve+=(--comfyui-url "$COMFYUI_URL")
else
  if [ "$COMFY_WORKER_PROVISION" = 0 ]; then
    say "provisioning skipped (COMFY_WORKER_PROVISION=0)"
  else
    provision=(provision --manifest "$COMFY_WORKER_MANIFEST" --comfyui-path "$COMFYUI_PATH")
    if [ -z "${COMFY_WORKER_MODELS_DIR:-}" ] || [ -f "$COMFYUI_PATH/extra_model_paths.yaml" ]; then
      provision+=(--skip-models) # the worker verifies the models while ComfyUI starts
      serve+=(--provision-models "$COMFY_WORKER_MANIFEST")
    fi
    say "provisioning from $COMFY_WORKER_MANIFEST"
    started=$(date +%s)
    "$COMFY_WORKER_BIN" "${provision[@]}" \
      || die "provisioning failed (see above); the worker was not started"
    say "provisioned in $(($(date +%s) - started)) s"
    COMFY_WORKER_PROVISIONED_AT=$(date +%s.%N)
    export COMFY_WORKER_PROVISIONED_AT
  fi
  serve+=(--comfyui-path "$COMFYUI_PATH")
  [ -z "${COMFYUI_PYTHON:-}" ] || serve+=(--comfyui-python "$COMFYUI_PYTHON")
fi

if [ -z "${COMFY_WORKER_BENCHMARK_WORKFLOW:-}" ] && [ -f "$COMFY_WORKER_MANIFEST" ]; then
  bench=$("$COMFY_WORKER_BIN" provision --manifest "$COMFY_WORKER_MANIFEST" --print-benchmark 2>/dev/null || true)
  [ -z "$bench" ] || serve+=(--benchmark-workflow "$bench")
fi
if [ "$mode" = local ]; then
  serve+=(--local --router-port "${COMFY_WORKER_ROUTER_PORT:-8081}")
  [ -z "${COMFY_WORKER_HOST:-}" ] || serve+=(--host "$COMFY_WORKER_HOST")
fi

echo $$ >"$pid_file"
say "starting: $COMFY_WORKER_BIN ${serve[*]}"
trap - ERR
cd "$COMFY_WORKER_STATE_DIR"
exec "$COMFY_WORKER_BIN" "${serve[@]}"
