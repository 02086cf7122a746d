"""``meridian router``: the end-user endpoint."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="listen address (default from settings: 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default from settings: 8443)")
    p.add_argument(
        "--control-plane",
        action="append",
        default=None,
        help="control-plane base URL to follow the snapshot from (repeatable)",
    )
    p.add_argument("--token", help="API token (read scope) for the control plane")
    p.add_argument("--etcd", help="etcd host:port to watch the routing snapshot (and keyring) in")
    p.add_argument(
        "--snapshot-path",
        type=Path,
        help="where the last good snapshot is kept (and the API keyring, beside it)",
    )
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument(
        "--fleet-ca", type=Path, help="the fleet CA (ca.pem): trust it for the control plane "
        "and workers",
    )  # fmt: skip
    p.add_argument("--worker-cert", type=Path, help="the router's fleet client certificate")
    p.add_argument("--worker-key", type=Path, help="its key (meridian ca issue --role router)")
    p.add_argument("--insecure", action="store_true", help="serve plaintext HTTP (logs a warning)")
    p.add_argument(
        "--self-signed",
        type=Path,
        metavar="DIR",
        help="serve HTTPS with a self-signed pair kept in DIR (made on first use)",
    )
    p.add_argument(
        "--emulate-wan",
        action="store_true",
        help="delay each request by the modelled client-to-region RTT (one-machine demos)",
    )
    p.add_argument(
        "--require-api-key",
        action="store_true",
        help="refuse model requests without an API key issued through /v1/api-keys",
    )
    p.add_argument(
        "--admit-interactive-load",
        type=float,
        metavar="X",
        help="refuse interactive requests (503, Retry-After) while the fleet holds X times "
        "what it serves without queueing (default 0: never)",
    )
    p.add_argument(
        "--admit-batch-load",
        type=float,
        metavar="X",
        help="the same for batch requests (default 1: refused once every worker is busy)",
    )
    p.add_argument(
        "--hold-batch",
        type=int,
        metavar="N",
        help="hold up to N batch requests over the batch ceiling (but under the interactive "
        "one) in a per-key fair queue until the load falls (default 0: refuse them)",
    )
    p.add_argument(
        "--spread-ms",
        type=float,
        metavar="MS",
        help="choose at random among regions within MS of the best, weighted by free servers "
        "(default 0: always the best; 20 when several router replicas share the traffic)",
    )
    p.add_argument(
        "--brownout-load",
        type=float,
        metavar="X",
        help="serve a saturated region's overflow from its deployments' degrade_to variant "
        "once its base workers hold X times what they serve without queueing (default 0: off)",
    )
    p.add_argument(
        "--policy",
        default="meridian",
        help="routing policy: meridian, nearest, waterfall, round-robin",
    )


def main(args: argparse.Namespace) -> int:
    from router.settings import RouterSettings

    overrides: dict[str, object] = {}
    # command-line option -> setting, for the options given
    for option, setting in (
        *((f, f) for f in ("host", "port", "snapshot_path", "tls_cert", "tls_key", "fleet_ca")),
        ("admit_interactive_load", "admit_interactive_max_load"),
        ("admit_batch_load", "admit_batch_max_load"),
        ("hold_batch", "hold_batch_max"),
        ("spread_ms", "spread_ms"),
        ("brownout_load", "brownout_max_load"),
        ("worker_cert", "worker_tls_cert"),
        ("worker_key", "worker_tls_key"),
    ):
        value = getattr(args, option)
        if value is not None:
            overrides[setting] = value
    if args.emulate_wan:
        overrides["emulate_wan"] = True
    if args.require_api_key:
        overrides["require_api_key"] = True
    if args.control_plane:
        overrides["control_plane_urls"] = args.control_plane
    if args.etcd:
        overrides["coordination_url"] = f"etcd://{args.etcd}"
    if args.token:
        overrides["control_plane_token"] = args.token
    if args.self_signed:
        from router.tls import self_signed_pair

        overrides["tls_cert"], overrides["tls_key"] = self_signed_pair(args.self_signed)
    settings = RouterSettings(**overrides)  # type: ignore[arg-type]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s router %(message)s")
    if settings.tls_cert is None:
        logging.getLogger("router").warning(
            "serving PLAINTEXT HTTP (%s): pass --tls-cert/--tls-key or --self-signed",
            "--insecure" if args.insecure else "no certificate given",
        )
    if settings.worker_tls_cert is None:
        logging.getLogger("router").warning(
            "traffic to workers is PLAINTEXT: pass --worker-cert, --worker-key and --fleet-ca"
        )
    import uvloop

    return uvloop.run(_serve(settings, args.policy))


async def _serve(settings: object, policy: str) -> int:
    from router.ranking import make_policy
    from router.server import RouterServer
    from router.settings import RouterSettings

    assert isinstance(settings, RouterSettings)
    server = RouterServer(settings, make_policy(policy, settings.spread_ms))
    port = await server.start()
    # Libraries, the policy's tables and the snapshot live as long as the process: keep
    # them out of the cyclic collector's passes (shorter pauses, fewer slow requests).
    gc.collect()
    gc.freeze()
    scheme = "https" if settings.tls_cert else "http"
    print(f"router listening on {scheme}://{settings.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.drain()
    return 0
