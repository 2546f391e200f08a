"""`comfy-worker deploy`: deploy.toml as the Vast deployment (config, plan, apply, render, cli)."""
