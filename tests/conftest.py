"""Session-wide fixtures. Feature folders keep their own conftest.py."""
