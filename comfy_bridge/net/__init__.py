"""Network policy for caller-chosen URLs: the address guard (guard.py) and pinned S3 endpoints (endpoint.py)."""
