"""Request and response models shared by the routes and the layers below them (job.py)."""
