#!/usr/bin/env bash
# One entry point for a fresh machine: set up the environment, then run or test.
#   ./dev.sh run  [comfy-worker serve flags]   run the worker locally (Vast emulator + ComfyUI);
#                                              without --comfyui-url/--comfyui-path it first
#                                              provisions ComfyUI from models_manifest.toml
#                                              into .state/ComfyUI (idempotent)
#   ./dev.sh test [pytest args]                run the test suite
#   ./dev.sh bench NAME                        run bench/NAME.py
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  # Reinstall only when the project's dependency list changed.
  local stamp
  stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    touch "$stamp"
  fi
}

cmd=${1:-test}
shift || true
case "$cmd" in
  test)
    setup
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  run)
    setup
    case " $* " in
      *" --comfyui-url"*|*" --comfyui-path"*) ;;
      *)
        "$VENV/bin/python" -m pip install -q -e '.[provision]'
        "$VENV/bin/comfy-worker" provision --comfyui-path .state/ComfyUI
        set -- --comfyui-path .state/ComfyUI "$@"
        ;;
    esac
    exec "$VENV/bin/comfy-worker" serve --local "$@"
    ;;
  bench)
    setup
    name=${1:?bench name}; shift
    exec "$VENV/bin/python" "bench/$name.py" "$@"
    ;;
  *)
    echo "usage: $0 {test|run|bench NAME} [args]" >&2
    exit 2
    ;;
esac
