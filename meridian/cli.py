"""The ``meridian`` command: one subcommand per process or tool.

Each subcommand lives in its own package as a module exposing
``add_arguments(parser)`` and ``main(args) -> int``. Those modules import their
heavy dependencies inside ``main`` so that ``meridian --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo.cli", "run the whole system on this machine: routing and a failover"),
    "control-plane": ("control_plane.cli", "run the control plane (admin API, registry)"),
    "token": ("control_plane.token_cli", "create, list or revoke API tokens in the registry"),
    "regions": ("control_plane.regions_cli", "register or deregister a region (idempotent)"),
    "artifacts": ("control_plane.artifacts_cli", "upload a model's artifact to the registry"),
    "status": ("control_plane.status_cli", "the fleet at a glance: regions, health, traffic"),
    "rollout": ("control_plane.rollouts_cli", "create, follow, pause, resume or abort a rollout"),
    "router": ("router.cli", "run the router (the end-user HTTPS endpoint)"),
    "simulate": ("simulator.cli", "simulate the fleet: every routing policy on real traffic"),
    "worker": ("worker.cli", "serve models over OIP v2 REST and gRPC with dynamic batching"),
    "lm": ("worker.generation.cli", "build the tiny generative model, or generate with a model"),
    "quantize": ("worker.quantize", "make an int8 variant of an ONNX model, checked against fp32"),
    "ca": ("meridian.pki.cli", "make the fleet CA (or import one) and issue certificates"),
    "agent": ("region_agent.cli", "run a region agent: GPU health, workers, control-plane link"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meridian", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
