"""Stands in for ``meridian agent`` where provisioning is tested without it.

Takes the agent's arguments, checks the credential file is there, records how it was
started in ``--record-dir/<region>.json``, then runs until SIGTERM or SIGINT and
records that it was asked to stop (``<region>.stopped``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record-dir", type=Path, required=True)
    parser.add_argument("--control-plane", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--credential-file", type=Path, required=True)
    parser.add_argument("--gpu-type", default="")
    parser.add_argument("--simulate-gpus", type=int, default=0)
    args = parser.parse_args()

    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    record = {
        "pid": os.getpid(),
        "sid": os.getsid(0),
        "control_plane": args.control_plane,
        "region": args.region,
        "credential_file": str(args.credential_file),
        "credential": args.credential_file.read_text().strip(),
        "gpu_type": args.gpu_type,
        "simulate_gpus": args.simulate_gpus,
    }
    args.record_dir.mkdir(parents=True, exist_ok=True)
    tmp = args.record_dir / f".{args.region}.json.tmp"
    tmp.write_text(json.dumps(record))
    tmp.replace(args.record_dir / f"{args.region}.json")
    print(f"stand-in agent for {args.region} running (pid {os.getpid()})", flush=True)

    received = signal.sigwait(stop)
    (args.record_dir / f"{args.region}.stopped").write_text(signal.Signals(received).name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
