"""Provisioning: ComfyUI, custom node packs and models from models_manifest.toml, and the
checks that a running ComfyUI really offers what the worker needs."""
