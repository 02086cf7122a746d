"""``meridian demo``: run the whole system on this machine and show it routing and failing over."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", type=Path, default=Path("var/demo"), help="state and logs")
    p.add_argument("--regions", type=int, default=4, help="how many regions (1-4)")
    p.add_argument("--rate", type=float, default=3.0, help="requests/s from each client city")
    p.add_argument("--seconds", type=float, default=15.0, help="length of each traffic phase")
    p.add_argument("--no-failover", action="store_true", help="do not kill a region")
    p.add_argument("--variant", default="int8", help="variant to deploy ('' for fp32)")
    p.add_argument(
        "--chat-rate", type=float, default=0.4, help="chat streams/s from each city (0: none)"
    )
    p.add_argument("--chat-tokens", type=int, default=48, help="tokens per chat answer")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext on every wire instead of TLS from the demo's own CA (logs a warning)",
    )
    p.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep the fleet running this long after the traffic, to look around the console",
    )
    p.add_argument("--json", type=Path, help="write the results here (default WORKDIR/result.json)")


def main(args: argparse.Namespace) -> int:
    from demo.run import DemoOptions, run_demo

    if not 1 <= args.regions <= 4:
        raise SystemExit("--regions must be between 1 and 4")
    return run_demo(
        DemoOptions(
            workdir=args.workdir,
            regions=args.regions,
            rate=args.rate,
            steady_s=args.seconds,
            after_failure_s=args.seconds,
            fail=not args.no_failover and args.regions > 1,
            json_out=args.json,
            variant=args.variant,
            chat_rate=args.chat_rate,
            chat_tokens=args.chat_tokens,
            insecure=args.insecure,
            linger_s=args.linger,
        )
    )
