"""``pi-stream simulate``: run the simulator standalone, print what a notebook needs, and take
fault commands on stdin (or over HTTP: ``POST {url}/simulator/faults/{name}``).

``add_simulate_arguments(parser)`` adds the flags to an argparse parser and ``run_simulate(args)``
runs it; ``python -m pi_stream_source.simulator`` does both.
"""
from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
from typing import Any, Dict, List, Optional, TextIO

COMMANDS = """commands (channel ids from 'channels'; omit to hit every channel):
  channels | stats | help | quit
  drop [id]            clean close          reset [id]          abrupt TCP reset
  stall [id]           stop sending         resume [id]         send again (with the backlog)
  freeze [id]          stall and stop reading (pings unanswered)
  restart [downtime]   restart the server (archive kept)
  malformed [id]       a non-JSON frame     fragment [pieces]   next message in several frames
  big [bytes]          a >=10 MB frame      reject [count] [status]   refuse next upgrades (401)
  accept_delay SECONDS slow upgrades        jump SECONDS        move the clock forward
  edit [webid]         edit a past value (re-sent Substituted)
  late WEBID SECONDS_AGO VALUE   archive a late value
  fail [count] [status]          next REST requests fail
  repeat on|off        repeat current values     order on|off   values newest first"""


#: up to this many tags every WebID is printed on one line (a notebook's webIds option)
MAX_PRINTED_WEBIDS = 1000


def add_simulate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = parser
    p.add_argument("--tags", type=int, default=100, help="number of PI points")
    p.add_argument("--rate", type=float, default=1.0, help="values per second per tag")
    p.add_argument("--port", type=int, default=8765, help="TCP port (0: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--auth", choices=["anonymous", "basic", "bearer", "kerberos"], default="anonymous",
                   help="authentication the server asks for")
    p.add_argument("--keytab", default=None, help="kerberos: keytab of the service principal HTTP/<host> "
                                                  "(default: KRB5_KTNAME)")
    p.add_argument("--username", default="piuser", help="basic: accepted user")
    p.add_argument("--password", default="pi-secret", help="basic: accepted password")
    p.add_argument("--token", default=None, help="bearer token to accept (one is issued when omitted)")
    p.add_argument("--token-ttl", type=float, default=0.0,
                   help="bearer: seconds a token from POST /token (or issue_token) is valid; 0: forever")
    p.add_argument("--client-id", default="pi-stream-client", help="client id accepted by POST /token")
    p.add_argument("--client-secret", default="pi-client-secret", help="client secret accepted by POST /token")
    p.add_argument("--kinds", default="mixed", help="sine, ramp, step, walk, int, digital, string, bool, "
                                                   "system, edge, a comma list, or mixed")
    p.add_argument("--seed", type=int, default=42, help="random seed of the generated values")
    p.add_argument("--tls", action="store_true", help="serve https/wss with a certificate from a generated CA")
    p.add_argument("--certfile", default=None, help="TLS certificate (PEM) instead of a generated one")
    p.add_argument("--keyfile", default=None, help="key of --certfile")
    p.add_argument("--history", type=float, default=3600.0, help="seconds of archive before the start")
    p.add_argument("--message-shape", choices=["items", "value", "spec"], default="items",
                   help="items: Items[] per stream (Channels topic); value: one Value per stream; "
                        "spec: as the swagger's 101 schema of each channel form")
    p.add_argument("--bool-strings", action="store_true", help='quality flags as "true"/"false" strings')
    p.add_argument("--repeat-values", action="store_true", help="repeat current values in every message")
    p.add_argument("--out-of-order", action="store_true", help="values newest first within a message")
    p.add_argument("--accept-delay", type=float, default=0.0, help="seconds before a channel upgrade is accepted")
    p.add_argument("--max-returned-items", type=int, default=150_000,
                   help="PI Web API's MaxReturnedItemsPerCall")
    p.add_argument("--poll-interval", type=float, default=None,
                   help="seconds between channel messages (None: min(1/rate, 1))")
    p.add_argument("--af-elements", type=int, default=10, help="AF elements in the asset database")
    p.add_argument("--attributes-per-element", type=int, default=10, help="attributes of each AF element")
    p.add_argument("--webids-file", default=None, help="write every point's WebID to this file, one a line")
    p.add_argument("--no-commands", action="store_true", help="do not read fault commands from stdin")
    return p


def config_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    return dict(tags=args.tags, rate=args.rate, port=args.port, host=args.host, auth=args.auth,
                username=args.username, password=args.password, token=args.token, keytab=args.keytab, kinds=args.kinds, seed=args.seed,
                token_ttl=args.token_ttl, client_id=args.client_id, client_secret=args.client_secret,
                tls=args.tls and not args.certfile, certfile=args.certfile, keyfile=args.keyfile,
                history_seconds=args.history, message_shape=args.message_shape, bool_strings=args.bool_strings,
                repeat_values=args.repeat_values, out_of_order=args.out_of_order, accept_delay=args.accept_delay,
                max_returned_items=args.max_returned_items, poll_interval=args.poll_interval,
                af_elements=args.af_elements, attributes_per_element=args.attributes_per_element)


def describe(sim: Any, out: TextIO = sys.stdout) -> None:
    cfg = sim.config
    print(f"PI Web API simulator at {sim.url}", file=out)
    print(f"  channels: {sim.ws_url}/streamsets/channel?webId=…", file=out)
    if cfg.auth == "basic":
        print(f"  auth: basic  username={cfg.username}  password={cfg.password}", file=out)
    elif cfg.auth == "bearer":
        print(f"  auth: bearer  token={cfg.token}", file=out)
        ttl = f"{cfg.token_ttl:g}s" if cfg.token_ttl > 0 else "no expiry"
        print(f"  tokens (client credentials, {ttl}): POST {sim.token_url}  client_id={cfg.client_id}  "
              f"client_secret={cfg.client_secret}", file=out)
    elif cfg.auth == "kerberos":
        print(f"  auth: kerberos (Negotiate)  service keytab={cfg.keytab or '$KRB5_KTNAME'}", file=out)
    else:
        print("  auth: anonymous", file=out)
    if sim.ca_file:
        print(f"  TLS CA bundle (option caBundle): {sim.ca_file}", file=out)
    print(f"  {len(sim.tags)} tags at {cfg.rate:g} Hz ({cfg.kinds}); data server {sim.dataserver_webid}", file=out)
    for tag in sim.tags[:5]:
        print(f"    {tag.webid}   {tag.path}", file=out)
    if len(sim.tags) <= MAX_PRINTED_WEBIDS:
        print(f"  webIds of all {len(sim.tags)} tags, to paste as option webIds:", file=out)
        print("    " + ",".join(t.webid for t in sim.tags), file=out)
    else:
        print(f"  {len(sim.tags)} WebIDs are too many to print; --webids-file FILE writes them all, one a line",
              file=out)
    if sim.elements:
        el = sim.elements[0]
        print(f"  AF element {el.path}: {el.webid} ({len(el.attributes)} attributes)", file=out)
    print(f"  faults: type 'help', or POST {sim.url}/simulator/faults/<name> with X-Requested-With", file=out)
    out.flush()


def run_command(sim: Any, line: str) -> Any:
    """One stdin command → the simulator's fault API. Returns what to print."""
    words = shlex.split(line)
    if not words:
        return None
    cmd, rest = words[0].lower(), words[1:]

    def arg(i: int, conv: Any, default: Any) -> Any:
        return conv(rest[i]) if len(rest) > i else default

    if cmd in ("help", "?"):
        return COMMANDS
    if cmd == "channels":
        return json.dumps([{k: v for k, v in c.items() if k != "webids"} | {"streams": len(c["webids"])}
                           for c in sim.channels()])
    if cmd == "stats":
        return json.dumps(sim.stats)
    if cmd in ("drop", "reset"):
        return f"closed {sim.drop_channels(abrupt=cmd == 'reset', channel=arg(0, int, None))} channel(s)"
    if cmd in ("stall", "freeze", "resume"):
        sim.set_stalled(cmd != "resume", channel=arg(0, int, None), freeze=cmd == "freeze")
        return {"stall": "stalled", "freeze": "frozen", "resume": "resumed"}[cmd]
    if cmd == "restart":
        sim.restart(downtime=arg(0, float, 0.0))
        return f"restarted on {sim.url}"
    if cmd == "malformed":
        return f"queued on {sim.inject_malformed(channel=arg(0, int, None))} channel(s)"
    if cmd == "fragment":
        return f"queued on {sim.inject_fragmented(pieces=arg(0, int, 3))} channel(s)"
    if cmd == "big":
        return f"queued on {sim.inject_big(size=arg(0, int, 10 * 1024 * 1024))} channel(s)"
    if cmd == "reject":
        sim.reject_next_upgrades(arg(0, int, 1), arg(1, int, 401))
        return "next upgrade(s) will be refused"
    if cmd == "accept_delay":
        sim.set_accept_delay(arg(0, float, 0.0))
        return "ok"
    if cmd == "jump":
        first, last = sim.jump_time(arg(0, float, 60.0))
        return f"clock moved; ticks {first}..{last} archived but not sent on channels"
    if cmd == "edit":
        ts, value = sim.edit_value(arg(0, str, sim.tags[0].webid))
        return f"edited value at {ts}: {value!r}"
    if cmd == "late":
        webid, ago, value = arg(0, str, sim.tags[0].webid), arg(1, float, 30.0), arg(2, float, 0.5)
        ts = sim.add_late_value(webid, sim.now() - int(ago * 1_000_000) - 1, value)
        return f"late value archived at {ts}"
    if cmd == "fail":
        sim.fail_next_requests(arg(0, int, 1), arg(1, int, 500))
        return "next request(s) will fail"
    if cmd in ("repeat", "order"):
        on = arg(0, str, "on").lower() in ("on", "true", "1", "yes")
        sim.set_channel_options(**({"repeat_values": on} if cmd == "repeat" else {"out_of_order": on}))
        return "ok"
    raise ValueError(f"unknown command {cmd!r}; type 'help'")


def run_simulate(args: argparse.Namespace, stdin: Optional[TextIO] = None) -> int:
    from .server import PISimulator

    sim = PISimulator(**config_from_args(args))
    sim.start()
    if args.webids_file:
        with open(args.webids_file, "w") as f:
            f.write("\n".join(t.webid for t in sim.tags) + "\n")
    describe(sim)
    print("Ctrl-C to stop.", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())

    def commands() -> None:
        for line in stdin or sys.stdin:
            if line.strip().lower() in ("quit", "exit"):
                break
            try:
                out = run_command(sim, line)
            except Exception as exc:   # a bad command must not stop the server
                out = f"error: {exc}"
            if out:
                print(out, flush=True)
        else:
            return                      # stdin closed: keep serving until a signal
        done.set()

    if not args.no_commands:
        threading.Thread(target=commands, name="pi-sim-commands", daemon=True).start()
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    sim.stop()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pi-stream simulate", description="run the PI Web API simulator",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_simulate_arguments(parser)
    return run_simulate(parser.parse_args(argv))
