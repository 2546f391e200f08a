"""`comfy-worker mcp`: ComfyUI workflows as MCP tools for AI agents (server.py, tools.py, jobs.py, backend.py)."""
