"""A PI Web API simulator: a real HTTP + WebSocket server on 127.0.0.1 that speaks the documented
protocol (channels, recorded values, lookups), archives every value it sends, and injects faults."""
from .server import PISimulator, SimConfig

__all__ = ["PISimulator", "SimConfig"]
