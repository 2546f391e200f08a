"""S3 targets and clients, shared by output delivery and `s3://` inputs (see target.py, clients.py)."""
