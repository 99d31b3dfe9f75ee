"""Fault injection, mixed into ``PISimulator``: everything a test (or the CLI, or
``POST {base}/simulator/faults/{name}``) can switch on at run time, per channel or globally.
State lives on the server's event loop; these methods hop onto it (``_run``/``_call``)."""
from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Pattern, Tuple

from ..pitime import MICROS
from .encoding import Encoder
from .generators import SYSTEM_STATES
from .model import SimElement, SimTag
from .rest_api import PIError, Resp, error_resp
from .ticks import TICKS_PER_US, parse_pi_time_ticks

if TYPE_CHECKING:
    from .server import PISimulator

    _Base = PISimulator
else:
    _Base = object


PT_CREATED = {"Name": "Pt Created", "Value": dict(SYSTEM_STATES)["Pt Created"], "IsSystem": True}


def endpoint_pattern(endpoint: str) -> Pattern[str]:
    """An endpoint pattern below the base path, e.g. ``streamsets/end``, ``streams/{webId}/recorded``
    (``{…}`` is one path segment) or ``*/recorded`` (``*`` is anything), matched case-insensitively
    against the whole path without the query."""
    text = endpoint.strip().strip("/")
    if not text:
        raise ValueError("endpoint must name a path below the base path, e.g. 'streamsets/end'")
    rx = re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(text)).replace(r"\*", ".*")
    return re.compile(rx + "/?", re.IGNORECASE)


@dataclass
class EndpointFault:
    endpoint: str
    pattern: Pattern[str]
    status: int
    remaining: Optional[int]                 # None: every request from now on
    message: str


class FaultsMixin(_Base):
    """The fault API of ``PISimulator``. ``channel``: an id from ``channels()``; None means every
    open channel (and, for options, channels opened later)."""

    def set_channel_options(self, channel: Optional[int] = None, repeat_values: Optional[bool] = None,
                            out_of_order: Optional[bool] = None) -> None:
        """Repeat each stream's current value in every message / send values newest first. An
        option left None is unchanged; a global setting replaces per-channel ones."""
        def apply() -> None:
            if channel is None:
                if repeat_values is not None:
                    self.config.repeat_values = repeat_values
                if out_of_order is not None:
                    self.config.out_of_order = out_of_order
            for ch in self.hub.select(channel):
                if repeat_values is not None:
                    ch.repeat_values = repeat_values if channel is not None else None
                if out_of_order is not None:
                    ch.out_of_order = out_of_order if channel is not None else None
        self._run(apply)

    def drop_channels(self, abrupt: bool = False, channel: Optional[int] = None) -> int:
        """Close open channels: a clean close (1001) or an abrupt TCP reset. Returns how many."""
        self.stats["faults_injected"] += 1
        return self._call(self.hub.drop(abrupt, channel))

    def set_stalled(self, stalled: bool, channel: Optional[int] = None, freeze: bool = False) -> None:
        """Stall: keep channels open but send nothing (no values, no heartbeats). Values are sent
        again (with the backlog) when the stall ends. ``freeze`` also stops reading the open
        sockets, so client pings go unanswered (a hung server rather than a quiet one)."""
        def apply() -> None:
            if channel is None:
                self.stalled = stalled
            for ch in self.hub.select(channel):
                if channel is not None:
                    ch.stalled = stalled
                if ch.transport is None or ch.frozen == (stalled and freeze):
                    continue
                ch.frozen = stalled and freeze
                try:
                    ch.transport.pause_reading() if ch.frozen else ch.transport.resume_reading()
                except RuntimeError:
                    pass                        # the transport is closing
        self._run(apply)

    def _inject(self, kind: str, arg: Any, channel: Optional[int]) -> int:
        def apply() -> int:
            chans = self.hub.select(channel)
            for ch in chans:
                ch.injects.append((kind, arg))
            return len(chans)
        return self._run(apply)

    def inject_malformed(self, channel: Optional[int] = None) -> int:
        """The next poll sends a text frame that is not JSON (before the normal message)."""
        return self._inject("malformed", None, channel)

    def inject_fragmented(self, pieces: int = 3, channel: Optional[int] = None) -> int:
        """The next message goes out as ``pieces`` WebSocket frames (continuation frames)."""
        return self._inject("fragment", max(2, int(pieces)), channel)

    def inject_big(self, size: int = 10 * 1024 * 1024, channel: Optional[int] = None) -> int:
        """The next message is at least ``size`` bytes: the new values plus repeats of an
        already-sent current value (valid JSON, nothing a client should keep twice)."""
        return self._inject("big", int(size), channel)

    def reject_next_upgrades(self, count: int = 1, status: int = 401) -> None:
        """The next ``count`` channel upgrades are refused with ``status`` (401: PI's auth error)."""
        self._run(lambda: self._reject_upgrades.extend([status] * count))

    def set_accept_delay(self, seconds: float) -> None:
        """Slow acceptance: wait this long before answering a channel upgrade."""
        self.config.accept_delay = float(seconds)

    def fail_next_requests(self, count: int = 1, status: int = 500, path: Optional[str] = None,
                           web_exception: bool = False) -> None:
        """The next ``count`` HTTP requests (REST or channel upgrade) whose path contains ``path``
        answer ``status`` with PI's ``Errors`` body; with ``web_exception`` the next
        ``streamsets/recorded`` calls answer 200 with a top-level ``WebException`` instead."""
        def apply() -> None:
            if web_exception:
                self._web_exceptions += count
            else:
                self._fail_requests.extend([(status, path)] * count)
        self._run(apply)

    def fail_endpoint(self, endpoint: str, status: int = 500, times: Optional[int] = None,
                      message: Optional[str] = None) -> None:
        """Requests to ``endpoint`` (see ``endpoint_pattern``; also inside ``batch`` and channel
        upgrades) answer ``status`` with PI's ``{"Errors":[…]}`` body: ``times`` times, or every
        time when None, until ``clear_endpoint_faults``. Faults on different endpoints are
        independent; a newer fault on the same endpoint replaces the older one."""
        if not 400 <= int(status) <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), not {status!r}")
        if times is not None and int(times) < 1:
            raise ValueError(f"times must be a positive count or None (every request), not {times!r}")
        fault = EndpointFault(endpoint, endpoint_pattern(endpoint), int(status), None if times is None else int(times),
                              message or f"An error has occurred (the simulator fails {endpoint} with {status}).")

        def apply() -> None:
            self._endpoint_faults[:] = [f for f in self._endpoint_faults if f.endpoint.lower() != endpoint.lower()]
            self._endpoint_faults.append(fault)
        self._run(apply)

    def clear_endpoint_faults(self, endpoint: Optional[str] = None) -> None:
        """End ``fail_endpoint`` faults: the one on ``endpoint``, or all."""
        self._run(lambda: self._endpoint_faults.__setitem__(slice(None), [] if endpoint is None else [
            f for f in self._endpoint_faults if f.endpoint.lower() != endpoint.lower()]))

    def endpoint_failure(self, path: str) -> Optional[Resp]:
        """The answer for ``path`` (below the base path) when an endpoint fault or
        ``missing_endpoints`` applies to it, else None."""
        path = path.strip("/")
        for missing in self.config.missing_endpoints:
            if endpoint_pattern(missing).fullmatch(path):
                return error_resp(404, f"The requested resource was not found: '{path}'.")
        for fault in self._endpoint_faults:
            if fault.pattern.fullmatch(path):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._endpoint_faults.remove(fault)
                self.stats["endpoint_faults_served"] += 1
                return error_resp(fault.status, fault.message)
        return None

    def take_web_exception(self) -> bool:
        if self._web_exceptions > 0:
            self._web_exceptions -= 1
            self.stats["faults_injected"] += 1
            return True
        return False

    def forbid(self, webid: str) -> None:
        """Requests for ``webid`` answer 403 from now on."""
        self.forbidden.add(webid)

    def jump_time(self, seconds: float, send_skipped: bool = False) -> Tuple[int, int]:
        """Move the clock forward. The ticks jumped over are archived (they are a function of the
        clock); channels skip them unless ``send_skipped``, so a client must read them from the
        archive. Returns the (first, last) skipped ticks."""
        if seconds <= 0:
            raise ValueError("time only jumps forward")

        def apply() -> Tuple[int, int]:
            arch = self.archive_store
            before = arch.last_tick()
            arch.clock_offset += int(seconds * MICROS)
            after = arch.last_tick()
            if not send_skipped and after - 1 > before:
                self.hub.skips.append((before + 1, after - 1))
            self.stats["faults_injected"] += 1
            self.hub.wake_all()
            return before + 1, after - 1
        return self._run(apply)

    def _stamp(self, tag: Any, ts: Any, ticks: bool, existing: bool) -> int:
        """A stamp (100-ns ticks) from what a caller gives: None (the value two steps ago), a PI
        time string (ISO 8601 keeps its 7th digit), ticks (``ticks=True``) or µs. A µs time of an
        ``existing`` value means the archived value whose µs view it is."""
        arch = self.archive_store
        if ts is None:
            return arch.stamp(tag, arch.last_tick() - 2 - (arch.last_tick() - 2) % tag.every)
        if isinstance(ts, str):
            return parse_pi_time_ticks(ts, arch.now_ticks())
        if isinstance(ts, bool) or not isinstance(ts, int):
            raise TypeError(f"a timestamp is an int (µs, or 100-ns ticks with ticks=True) or a PI time "
                            f"string, not {ts!r}")
        if ticks:
            return ts
        found = arch.find(tag, ts) if existing else None
        return found if found is not None else ts * TICKS_PER_US

    def _out(self, stamp: int, ticks: bool) -> int:
        return stamp if ticks else stamp // TICKS_PER_US

    def _live_tag(self, webid: str) -> SimTag:
        """The point behind a stream's WebID that exists now (writes to a deleted one fail)."""
        obj = self.model.resolve(webid)
        if obj is None or isinstance(obj, SimElement):
            raise KeyError(f"no current point or attribute has the WebID {webid!r}")
        return obj.tag

    def write_value(self, webid: str, ts: Any, value: Any, *, ticks: bool = False,
                    substituted: Optional[bool] = None) -> int:
        """Write ``value`` at ``ts`` into the archive, as a PI client or interface does, and send
        it on every open channel that carries the stream (out of order, as PI sends late values
        and edits). A value already archived at that stamp is replaced (an edit; ``Substituted``
        by default, as PI marks edits); else a new value is archived (a late or out-of-order
        value; not ``Substituted`` by default). ``ts``: µs (the value whose µs view it is, else
        that whole µs), 100-ns ticks with ``ticks=True``, or a PI time string. Returns the stamp
        (ticks with ``ticks``, else its µs view)."""
        tag = self._live_tag(webid)

        def apply() -> int:
            arch = self.archive_store
            t = self._stamp(tag, ts, ticks, existing=True)
            if t > arch.now_ticks():
                raise ValueError(f"PI archives no future values here: {t} is after now ({arch.now_ticks()}, 100-ns ticks)")
            k = arch.tick_at(tag, t)
            if k is not None or t in arch.late.get(tag.index, {}):
                arch.edit(tag, t, value, True if substituted is None else substituted)
                if k is not None:
                    self.hub.invalidate(tag.index, k)
            else:
                arch.add_late(tag, t, value, bool(substituted))
            self.hub.queue_point(tag, (t, k, None))
            self.stats["values_written"] += 1
            return self._out(t, ticks)
        return self._run(apply)

    def edit_value(self, webid: str, ts: Any = None, value: Any = None, *, ticks: bool = False) -> Tuple[int, Any]:
        """Change an archived value (default: the one two steps ago; default value: old + 1000)
        and send the edit, flagged ``Substituted``, on open channels carrying the stream. ``ts``
        as in ``write_value``. Returns (timestamp, new value); KeyError when nothing is archived
        there."""
        tag = self._live_tag(webid)

        def apply() -> Tuple[int, Any]:
            arch = self.archive_store
            t = self._stamp(tag, ts, ticks, existing=True)
            k = arch.tick_at(tag, t)
            if k is None and t not in arch.late.get(tag.index, {}):
                raise KeyError(f"{tag.name} has no archived value at {ts!r}")
            old = arch.point_value(tag, (t, k, None))
            new = value
            if new is None:
                numeric = isinstance(old, (int, float)) and not isinstance(old, bool)
                new = round(old + 1000.0, 6) if numeric else "edited"
            self.write_value(webid, t, new, ticks=True)
            self.stats["faults_injected"] += 1
            return self._out(t, ticks), new
        return self._run(apply)

    def add_late_value(self, webid: str, ts: Any, value: Any, *, ticks: bool = False) -> int:
        """Archive a new value with a past stamp between steps (a late write); ``ts`` as in
        ``write_value`` (µs: that whole µs). Open channels carrying the stream receive it out of
        order; with none open it is only in the archive. Returns the timestamp."""
        tag = self._live_tag(webid)

        def apply() -> int:
            t = self._stamp(tag, ts, ticks, existing=False)
            self.archive_store.add_late(tag, t, value)
            self.hub.queue_point(tag, (t, None, None))
            return self._out(t, ticks)
        return self._run(apply)

    def delete_point(self, name_or_webid: str) -> SimTag:
        """Delete a PI point (by name, path or any WebID form) while running. From now on REST
        lookups and reads of it answer 404 in PI's shape, new channels naming it are refused
        (404), and open channels carrying it keep sending their other streams but no more values
        of it (how PI shows a deletion on a channel is not documented: REFERENCE §1.6). AF
        attributes referencing it stay, without new values. ``archive(webid)`` still reports what
        was archived up to the deletion. Returns the deleted point."""
        def apply() -> SimTag:
            tag = self.model.find_point(name_or_webid)
            self.model.delete_tag(tag, self.archive_store.last_tick())
            self.hub.point_deleted(tag)
            self.stats["points_deleted"] += 1
            return tag
        return self._run(apply)

    def add_point(self, name: str, kind: str = "sine", every: int = 1, pt_created: bool = True) -> str:
        """Create a PI point while running, with the next point ID. Like PI, its first value is
        the system state "Pt Created" (code 251, not good) at the creation time (unless
        ``pt_created=False``, for oracles that compare numbers only); then values
        (``kind``, one every ``every`` steps) from the next step on. Lookups, ``nameFilter`` and
        ``dataservers/{id}/points`` include it, and ``sim.tags`` lists it. Returns its Full WebID."""
        if int(every) < 1:
            raise ValueError(f"every must be a positive number of steps, not {every!r}")

        def apply() -> str:
            arch = self.archive_store
            tag = self.model.add_tag(name, kind, int(every), arch.last_tick() + 1)
            tag.prefix = Encoder.stream_prefix(tag)
            if pt_created:
                arch.add_late(tag, arch.now_ticks(), dict(PT_CREATED))
            self.hub.point_added()
            self.stats["points_added"] += 1
            return tag.webid
        return self._run(apply)

    def restart(self, downtime: float = 0.0) -> None:
        """Restart the whole server: every connection is cut, the port is closed for ``downtime``
        seconds, then served again on the same port. The archive is kept."""
        self._call(self._restart(downtime), timeout=downtime + 30)

    async def _restart(self, downtime: float) -> None:
        self.stats["faults_injected"] += 1
        await self.hub.drop(abrupt=True)
        if self._runner:
            await self._runner.cleanup()
        await asyncio.sleep(downtime)
        await self._serve_http()

    def fault(self, name: str, **kw: Any) -> Any:
        """Fault injection by name (the CLI and ``POST {base}/simulator/faults/{name}`` use it):
        drop, reset, stall, freeze, resume, restart, malformed, fragment, big, reject, accept_delay, jump,
        edit, late, write, delete_point, add_point, fail, fail_endpoint, clear_endpoint_faults, repeat, out_of_order."""
        ch = kw.get("channel")
        if name == "drop":
            return self._inline(lambda: self.hub.drop(False, ch))
        if name == "reset":
            return self._inline(lambda: self.hub.drop(True, ch))
        if name in ("stall", "freeze"):
            return self.set_stalled(True, ch, freeze=name == "freeze")
        if name == "resume":
            return self.set_stalled(False, ch)
        if name == "restart":
            return self._inline(lambda: self._restart(float(kw.get("downtime", 0.0))))
        if name == "malformed":
            return self.inject_malformed(ch)
        if name == "fragment":
            return self.inject_fragmented(int(kw.get("pieces", 3)), ch)
        if name == "big":
            return self.inject_big(int(kw.get("size", 10 * 1024 * 1024)), ch)
        if name == "reject":
            return self.reject_next_upgrades(int(kw.get("count", 1)), int(kw.get("status", 401)))
        if name == "accept_delay":
            return self.set_accept_delay(float(kw.get("seconds", 0.0)))
        if name == "jump":
            return self.jump_time(float(kw.get("seconds", 60)), bool(kw.get("send_skipped", False)))
        if name == "edit":
            return self.edit_value(kw.get("webid") or self.tags[0].webid, kw.get("ts"), kw.get("value"))
        if name == "late":
            return self.add_late_value(kw.get("webid") or self.tags[0].webid, kw.get("ts"), kw.get("value", 0.5))
        if name == "write":
            return self.write_value(kw.get("webid") or self.tags[0].webid, kw.get("ts"), kw.get("value"),
                                    ticks=bool(kw.get("ticks", False)), substituted=kw.get("substituted"))
        if name == "fail":
            return self.fail_next_requests(int(kw.get("count", 1)), int(kw.get("status", 500)), kw.get("path"),
                                           bool(kw.get("web_exception", False)))
        if name == "delete_point":
            return self.delete_point(str(kw["point"])).webid
        if name == "add_point":
            return self.add_point(str(kw["point"]), str(kw.get("kind", "sine")), int(kw.get("every", 1)),
                                  bool(kw.get("pt_created", True)))
        if name == "fail_endpoint":
            return self.fail_endpoint(str(kw["endpoint"]), int(kw.get("status", 500)), kw.get("times"), kw.get("message"))
        if name == "clear_endpoint_faults":
            return self.clear_endpoint_faults(kw.get("endpoint"))
        if name in ("repeat", "out_of_order"):
            on = bool(kw.get("on", True))
            return self.set_channel_options(ch, **({"repeat_values": on} if name == "repeat" else {"out_of_order": on}))
        raise PIError(400, f"unknown fault {name!r}")

    def _inline(self, make: Callable[[], Any]) -> Any:
        """Run a coroutine factory: scheduled on the loop when called from it, else awaited."""
        if self._loop is not None and threading.current_thread() is self._thread:
            asyncio.ensure_future(make())
            return "scheduled"
        return self._call(make())
