"""``pi-stream``: the console command (demo, simulator, …)."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import List, Optional


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(seconds=args.seconds, tags=args.tags, rate=args.rate, out=args.out, trigger=args.trigger,
                    tags_per_channel=args.tags_per_channel)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .simulator import PISimulator

    kwargs = dict(tags=args.tags, rate=args.rate, port=args.port, host=args.host, auth=args.auth,
                  kinds=args.kinds, seed=args.seed)
    ca_path = None
    if args.tls:
        import tempfile

        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        tmp = tempfile.mkdtemp(prefix="pi-sim-tls-")
        ca_path, chain, key = f"{tmp}/ca.pem", f"{tmp}/server.pem", f"{tmp}/server.key"
        ca.cert_pem.write_to_path(ca_path)
        cert.cert_chain_pems[0].write_to_path(chain)
        for pem in cert.cert_chain_pems[1:]:
            pem.write_to_path(chain, append=True)
        cert.private_key_pem.write_to_path(key)
        kwargs.update(certfile=chain, keyfile=key)
    sim = PISimulator(**kwargs)
    sim.start()
    print(f"PI Web API simulator at {sim.url}")
    if args.auth == "basic":
        print(f"  auth: basic  username={sim.config.username}  password={sim.config.password}")
    elif args.auth == "bearer":
        print(f"  auth: bearer  token={sim.config.token}")
    if ca_path:
        print(f"  TLS CA bundle (option caBundle): {ca_path}")
    print(f"  {len(sim.tags)} tags at {args.rate:g} Hz; first WebIDs:")
    for tag in sim.tags[:5]:
        print(f"    {tag.webid}   {tag.path}")
    print("Ctrl-C to stop.", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    sim.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pi-stream", description="PI Web API channels → Spark → Delta Lake")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="simulator → pi_websocket → local Delta table, then a summary")
    demo.add_argument("--seconds", type=float, default=30)
    demo.add_argument("--tags", type=int, default=100)
    demo.add_argument("--rate", type=float, default=1.0, help="values per second per tag")
    demo.add_argument("--trigger", default="1 second")
    demo.add_argument("--tags-per-channel", type=int, default=50)
    demo.add_argument("--out", default="demo_output")
    demo.set_defaults(func=_cmd_demo)

    sim = sub.add_parser("simulate", help="run the PI Web API simulator standalone")
    sim.add_argument("--tags", type=int, default=100)
    sim.add_argument("--rate", type=float, default=1.0)
    sim.add_argument("--port", type=int, default=8765)
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--auth", choices=["anonymous", "basic", "bearer"], default="anonymous")
    sim.add_argument("--kinds", default="mixed")
    sim.add_argument("--seed", type=int, default=42)
    sim.add_argument("--tls", action="store_true", help="serve https/wss with a generated certificate")
    sim.set_defaults(func=_cmd_simulate)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
