"""Overload without collapse: goodput at twice the fleet's capacity, with and without
admission.

Three stand-in workers of fixed capacity (``bench/busy_worker.py --slots``: two requests
in service at once, 100 ms each) as three regions behind a real ``meridian router``
process. Their capacity is measured first (closed loop, straight to the workers); then an
open-loop client offers twice that, every request with a 1 s deadline, to three routers
in turn:

- ``none``: no admission and no deadline sent: every request queues at a worker (the
  deadline is only the client's, for counting goodput);
- ``deadline``: ``x-meridian-deadline-ms`` sent: the router refuses what the best region's
  expected time cannot meet, and workers drop what expired in their queues;
- ``admission``: that, and capacity admission (``--admit-interactive-load 2``): the router
  refuses at once whatever finds the fleet holding twice what it serves without queueing.

Goodput is requests answered 200 within their deadline per second of offered load. A last
run offers the same load half as ``batch`` (``x-meridian-priority: batch``), to show that
batch is shed first, and again with ``--hold-batch 64``: batch requests between the two
ceilings wait in the router's per-key fair queue instead of being refused at once.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from bench._overload_fleet import Summary, measure_capacity, offer, overload_fleet, summarise
from bench.report import parse_args, record, table

DEADLINE_MS = 1000.0
ADMISSION = ["--admit-interactive-load", "2", "--admit-batch-load", "1"]
NO_ADMISSION = ["--admit-interactive-load", "0", "--admit-batch-load", "0"]


HOLD = ["--hold-batch", "64"]


async def run(
    seconds: float,
) -> tuple[float, dict[str, Summary], dict[str, Summary], dict[str, Summary]]:
    with tempfile.TemporaryDirectory(prefix="meridian-overload-") as tmp:
        async with overload_fleet(Path(tmp)) as fleet:
            capacity = await measure_capacity(fleet.worker_urls, 2.0, 2 * fleet.slots)
            per_region = capacity / len(fleet.worker_urls)
            results: dict[str, Summary] = {}
            for mode, options, deadline in (
                ("none", NO_ADMISSION, None),
                ("deadline", NO_ADMISSION, DEADLINE_MS),
                ("admission", ADMISSION, DEADLINE_MS),
            ):
                client = await fleet.start_router(per_region, options)
                try:
                    outcomes = await offer(client, 2 * capacity, seconds, deadline_ms=deadline)
                finally:
                    await client.close()
                results[mode] = summarise(outcomes, seconds, DEADLINE_MS)
            classes: list[dict[str, Summary]] = []
            for options in (ADMISSION, ADMISSION + HOLD):
                client = await fleet.start_router(per_region, options)
                try:
                    mixed = await offer(client, 2 * capacity, seconds, deadline_ms=DEADLINE_MS,
                                        batch_share=0.5, seed=2)  # fmt: skip
                finally:
                    await client.close()
                by_class = {}
                for priority in ("interactive", "batch"):
                    of_class = [o for o in mixed if o.priority == priority]
                    by_class[priority] = summarise(of_class, seconds, DEADLINE_MS)
                classes.append(by_class)
            return capacity, results, classes[0], classes[1]


def main() -> None:
    args = parse_args(__doc__ or "")
    seconds = 4.0 if args.quick else 15.0
    capacity, results, by_class, held = asyncio.run(run(seconds))
    rows = [
        [mode, s.offered, s.ok, s.goodput_rps, s.goodput_rps / capacity, s.refused, s.expired,
         s.unanswered, s.admitted_p50_ms, s.admitted_p99_ms, s.refusal_p50_ms, s.refusal_p99_ms,
         s.refusal_max_ms]
        for mode, s in results.items()
    ]  # fmt: skip
    main_table = table(
        ["mode", "offered", "200", "goodput/s", "of capacity", "503 at once", "504",
         "unanswered", "admitted p50 ms", "admitted p99 ms", "refusal p50 ms",
         "refusal p99 ms", "refusal max ms"],
        rows,
    )  # fmt: skip
    class_table = table(
        ["class", "batch held", "offered", "200", "goodput/s", "503", "refused share",
         "admitted p99 ms", "unanswered"],
        [
            [p, hold, s.offered, s.ok, s.goodput_rps, s.refused, s.refused / max(1, s.offered),
             s.admitted_p99_ms, s.unanswered]
            for hold, classes in (("no", by_class), ("up to 64", held))
            for p, s in classes.items()
        ],
    )  # fmt: skip
    admitted, none = results["admission"], results["none"]
    ratio = admitted.goodput_rps / max(none.goodput_rps, 1e-9)
    body = (
        f"Three regions of one stand-in worker each (2 slots x 100 ms), measured capacity "
        f"{capacity:.1f} req/s in all; offered {2 * capacity:.0f} req/s (Poisson) for "
        f"{seconds:g} s per mode, deadline {DEADLINE_MS:g} ms, through a `meridian router` "
        f"process; latencies at the client (raw keep-alive HTTP/1.1).\n\n"
        f"{main_table}\n\n"
        f"The router's own time per refusal (its `Server-Timing: router;dur=` header), "
        f"p99: {admitted.refusal_router_p99_ms:.3f} ms.\n\n"
        f"Goodput with admission vs none: **{ratio:.1f}x**; vs deadline refusals alone: "
        f"{admitted.goodput_rps / max(results['deadline'].goodput_rps, 1e-9):.2f}x, with "
        f"admitted p99 {admitted.admitted_p99_ms:.0f} ms instead of "
        f"{results['deadline'].admitted_p99_ms:.0f} ms.\n\n"
        f"Half of the same load as `batch` (admitted below load 1, interactive below 2), "
        f"then with batch requests between the two held (`--hold-batch 64`; a held request "
        f"is refused when its deadline would pass):\n\n"
        f"{class_table}\n"
    )
    figures: dict[str, float | int | str] = {
        "capacity_rps": round(capacity, 1),
        "goodput_none_rps": round(none.goodput_rps, 1),
        "goodput_deadline_rps": round(results["deadline"].goodput_rps, 1),
        "goodput_admission_rps": round(admitted.goodput_rps, 1),
        "goodput_ratio_admission_vs_none": round(ratio, 2),
        "admitted_p99_ms": round(admitted.admitted_p99_ms, 1),
        "deadline_ms": DEADLINE_MS,
        "refusal_p50_ms": round(admitted.refusal_p50_ms, 2),
        "refusal_p99_ms": round(admitted.refusal_p99_ms, 2),
        "refusal_router_p99_ms": round(admitted.refusal_router_p99_ms, 3),
        "unanswered": sum(s.unanswered for s in results.values())
        + sum(s.unanswered for s in (*by_class.values(), *held.values())),
        "batch_goodput_rps": round(by_class["batch"].goodput_rps, 2),
        "batch_goodput_held_rps": round(held["batch"].goodput_rps, 2),
        "interactive_goodput_rps": round(by_class["interactive"].goodput_rps, 2),
        "interactive_goodput_held_rps": round(held["interactive"].goodput_rps, 2),
        "interactive_admitted_p99_held_ms": round(held["interactive"].admitted_p99_ms, 1),
        "batch_refused_share": round(
            by_class["batch"].refused / max(1, by_class["batch"].offered), 3
        ),
        "interactive_refused_share": round(
            by_class["interactive"].refused / max(1, by_class["interactive"].offered), 3
        ),
    }
    record("overload", "Overload: goodput with and without admission (bench.overload)", body,
           figures, quick=args.quick, write=not args.no_write)  # fmt: skip


if __name__ == "__main__":
    main()
