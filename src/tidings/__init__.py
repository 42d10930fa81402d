"""Tidings: one authoritative event stream feeding a real-time gateway and a notification
orchestrator."""

__version__ = "0.1.0"
__all__ = ["__version__"]
