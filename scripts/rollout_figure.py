"""The figure of ``docs/rollouts.md``: a rollout's traffic over time, from a real run.

Starts the rollout tests' fleet (``tests/e2e/rollout_fleet.py``: two control-plane
replicas on PostgreSQL + etcd, three regions of stand-in workers, a router, clients near
every region), rolls a good version out, then a version that fails 20% of requests, and
plots the share of each region's answers given by the new version, second by second.
Prints the measured figures as ``name=value`` lines.

Usage: python scripts/rollout_figure.py [--out docs/rollouts-traffic.png]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from meridian.waiting import wait_until
from tests.e2e.rollout_fleet import SITES, Answer, Clients, RolloutFleet, rollout_fleet


def run_rollout(fleet: RolloutFleet, old: str, new: str) -> tuple[float, dict[str, Any], float]:
    fleet.add_version(new)
    started = time.monotonic()
    rid = fleet.create(old, new)["id"]
    final: dict[str, Any] = {}

    def ended() -> bool:
        final.update(fleet.rollout(rid))
        return final["state"] in ("completed", "rolled_back", "aborted")

    wait_until(ended, timeout=300, interval=0.1, what="the rollout ends")
    return started, final, time.monotonic()


def shares(answers: list[Answer], start: float, end: float, version: str,
           region: str) -> tuple[list[float], list[float], list[int]]:  # fmt: skip
    """Per second from ``start``: the share of ``region``'s answers given by ``version``,
    and the failed requests of clients near it."""
    xs, ys, failed = [], [], []
    t = start
    while t < end:
        inside = [a for a in answers if t <= a.at < t + 1.0]
        served = [a for a in inside if a.status == 200 and a.region == region]
        xs.append(t - start)
        ys.append(sum(a.version == version for a in served) / len(served) if served else 0.0)
        failed.append(sum(a.status != 200 for a in inside if a.site == region))
        t += 1.0
    return xs, ys, failed


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("docs/rollouts-traffic.png"))
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as tmp, rollout_fleet(Path(tmp)) as fleet:
        clients = Clients(fleet.router_port)
        try:
            clients.wait_more(100)
            good = run_rollout(fleet, "1", "2")
            time.sleep(2.0)  # a little steady traffic between the two runs, for the figure
            bad = run_rollout(fleet, "2", "fails")
            clients.wait_more(100)
        finally:
            clients.stop()
        answers = list(clients.answers)
    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharey=False)
    start, final, end = good
    for site in SITES:
        xs, ys, _ = shares(answers, start, end + 3, "2", site.name)
        axes[0].plot(xs, ys, label=site.name, drawstyle="steps-post")
    axes[0].set_title(f"good version: 1 → 2, waves {final['waves']}, steps {final['steps']}")
    axes[0].set_ylabel("share answered by v2")
    axes[0].legend(loc="upper left")
    start, final, end = bad
    first = final["waves"][0][0]
    xs, ys, failed = shares(answers, start, end + 3, "fails", first)
    axes[1].plot(xs, ys, label=f"{first}: share answered by the canary", drawstyle="steps-post")
    axes[1].bar(xs, [f / 10 for f in failed], width=0.8, alpha=0.4, color="red",
                label="failed user requests near it (÷10)")  # fmt: skip
    axes[1].axvline(end - start, color="black", linestyle="--", label="rolled back")
    axes[1].set_title("a version failing 20% of requests: rolled back in the first wave")
    axes[1].set_xlabel("seconds since the rollout was created")
    axes[1].set_ylabel("share")
    axes[1].set_ylim(0, 0.3)
    axes[1].legend(loc="upper left")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    g_start, _, g_end = good
    b_start, b_final, b_end = bad
    in_bad = [a for a in answers if b_start <= a.at <= b_end]
    in_good = [a for a in answers if g_start <= a.at <= g_end]
    print(f"figure={args.out}")
    print(f"good_rollout_s={g_end - g_start:.1f}")
    print(f"good_requests={len(in_good)}")
    print(f"good_failed={sum(a.status != 200 for a in in_good)}")
    print(f"bad_rollback_s={b_end - b_start:.1f}")
    print(f"bad_requests={len(in_bad)}")
    print(f"bad_failed={sum(a.status != 200 for a in in_bad)}")
    print(f"bad_canary_answers={sum(a.version == 'fails' for a in in_bad)}")
    print(f"bad_reason={b_final['reason']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
