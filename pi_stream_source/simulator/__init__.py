"""A PI Web API simulator: a real HTTP + WebSocket server on 127.0.0.1 that speaks the documented
protocol (channels, recorded values, lookups, batch), archives every value it sends, and injects
faults. Modules: ``model`` (points, AF, WebIDs), ``generators`` (values), ``archive`` (clock and
archive), ``encoding`` (JSON templates), ``channels`` (WebSocket senders), ``rest_api`` (REST and
batch), ``faults`` (the fault API), ``server`` (``PISimulator``: lifecycle, auth, TLS, the
oracle), ``cli`` (``pi-stream simulate``). See README.md beside this file."""
from .model import SimAttribute, SimElement, SimTag
from .server import PISimulator, SimConfig

__all__ = ["PISimulator", "SimConfig", "SimTag", "SimAttribute", "SimElement"]
