"""``meridian agent``: run a region agent (GPU health, worker supervision, control-plane link)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shlex
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from region_agent.tls import AgentCertificate, AgentTLS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--control-plane",
        required=True,
        help="control-plane agent address(es): host:port[,host:port...]",
    )
    p.add_argument("--region", required=True, help="this region's registered name")
    p.add_argument(
        "--credential-file", required=True, type=Path, help="file holding the agent credential"
    )
    p.add_argument(
        "--simulate-gpus",
        type=int,
        default=None,
        metavar="N",
        help="use N simulated GPUs instead of NVML (hosts without NVIDIA GPUs)",
    )
    p.add_argument("--gpu-type", default="H100", help="model of the simulated GPUs")
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="GPU:KIND",
        help="inject a simulated fault at start: KIND is xid79, ecc, overheat or hung",
    )
    p.add_argument(
        "--worker-command",
        default="",
        help="worker command template (placeholders {host} {port} {grpc_port} {model} "
        "{version} {variant} {artifact_url} {artifact_sha256} {worker_id} {gpu}); "
        "default: python3 -m meridian worker ...",
    )
    p.add_argument("--worker-host", default="127.0.0.1", help="address workers listen on")
    p.add_argument("--scrape-path", default="/v2/stats", help="worker stats path")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the agent records its workers, to adopt them after a crash "
        "(default: var/agent/REGION)",
    )
    p.add_argument("--report-interval", type=float, default=1.0)
    p.add_argument(
        "--ca-cert",
        type=Path,
        default=None,
        help="the fleet CA certificate (ca.pem): enroll, then stream over mutual TLS",
    )
    p.add_argument(
        "--enroll",
        default="",
        help="control-plane enrollment address(es) host:port[,...] (with --ca-cert)",
    )
    p.add_argument("--insecure", action="store_true", help="stream in plaintext (logs a warning)")
    p.add_argument("--log-level", default="INFO")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    import httpx

    from region_agent.agent import RegionAgent
    from region_agent.gpus import Fault, GpuUnavailable, SimulatedGpuSource, open_gpu_source
    from region_agent.supervisor import DEFAULT_WORKER_COMMAND, LocalProcessSupervisor

    log = logging.getLogger("region_agent")
    try:
        credential = args.credential_file.read_text().strip()
    except OSError as exc:
        log.error("cannot read the credential file: %s", exc)
        return 2
    addresses = [a.strip() for a in args.control_plane.split(",") if a.strip()]
    tls = _tls(args, log)
    if isinstance(tls, bool):
        return 2
    try:
        gpus = open_gpu_source(args.simulate_gpus, args.gpu_type)
    except GpuUnavailable as exc:
        log.error("%s", exc)
        return 2
    for spec in args.fault:
        index, _, kind = spec.partition(":")
        if not isinstance(gpus, SimulatedGpuSource):
            log.error("--fault needs --simulate-gpus")
            return 2
        try:
            gpus.inject(int(index), Fault(kind))
        except (ValueError, IndexError):
            log.error(
                "bad --fault %r: use GPU:KIND with KIND in %s", spec, [f.value for f in Fault]
            )
            return 2
    command = shlex.split(args.worker_command) if args.worker_command else DEFAULT_WORKER_COMMAND
    tls_kwargs: dict[str, Any] = {}
    worker_env: dict[str, str] = {}
    certificate = None
    if tls is not None:  # enroll first: the workers get their certificates before they start
        certificate = await _enroll_with_workers(tls, args, credential, log)
        if certificate is None:
            return 2
        files = certificate.worker_files
        assert files is not None
        worker_env = files.worker_env()
        tls_kwargs = {
            "scheme": "https",
            "transport": httpx.AsyncHTTPTransport(verify=files.scrape_context()),
        }
    supervisor = LocalProcessSupervisor(
        command=command,
        host=args.worker_host,
        scrape_path=args.scrape_path,
        gpu_count=len(gpus.inventory()),
        # workers fetch their artifacts from the control plane with this region's credential
        env={
            "MERIDIAN_WORKER_ARTIFACT_TOKEN": credential,
            **worker_env,  # TLS: the workers' certificate from the control plane
        },
        id_prefix=f"{args.region}/",  # worker ids unique across regions
        state_dir=args.state_dir or Path("var/agent") / args.region,
        **tls_kwargs,
    )
    agent = RegionAgent(
        addresses,
        region=args.region,
        credential=credential,
        gpus=gpus,
        supervisor=supervisor,
        report_interval_s=args.report_interval,
        tls=tls,
    )
    if certificate is not None:
        agent.certificate = certificate  # enrolled above, with the workers' files
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await supervisor.start()
    task = asyncio.create_task(agent.run(), name="region-agent")
    try:
        await stop.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await supervisor.close()
        gpus.close()
    return 0


def _tls(args: argparse.Namespace, log: logging.Logger) -> AgentTLS | bool | None:
    """The agent's TLS from its flags; False after logging why they do not fit."""
    from region_agent.tls import AgentTLS

    if args.ca_cert is None:
        log.warning(
            "the stream to the control plane is PLAINTEXT (%s): pass --ca-cert and --enroll",
            "--insecure" if args.insecure else "no --ca-cert",
        )
        return None
    enroll = [a.strip() for a in args.enroll.split(",") if a.strip()]
    if not enroll:
        log.error("--ca-cert needs --enroll host:port (the control plane's enrollment port)")
        return False
    try:
        return AgentTLS(args.ca_cert.read_bytes(), enroll)
    except OSError as exc:
        log.error("cannot read the CA certificate: %s", exc)
        return False


async def _enroll_with_workers(
    tls: AgentTLS, args: argparse.Namespace, credential: str, log: logging.Logger
) -> AgentCertificate | None:
    """Enroll the agent and get its workers' certificate, retrying while the control
    plane is unreachable; None when it refuses (a wrong credential will not get better)."""
    import tempfile

    import grpc

    from region_agent.tls import AgentCertificate

    certificate = AgentCertificate(tls, args.region, credential)
    directory = Path(tempfile.mkdtemp(prefix="meridian-agent-tls-"))
    delay = 0.2
    while True:
        try:
            await certificate.enroll()
            await certificate.issue_worker_files(directory, [args.worker_host])
            return certificate
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                log.error("the control plane refused enrollment: %s", exc.details())
                return None
            log.warning("enrollment failed (%s); retrying in %.1fs", exc.details(), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
