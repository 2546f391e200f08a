"""Local emulator of Vast's router and autoscaler: see router.py."""

from worker.emulator.router import RouterEmulator, WorkerView, signed_message

__all__ = ["RouterEmulator", "WorkerView", "signed_message"]
