"""Elastic capacity: GPU-seconds against a static peak-provisioned fleet, and time to capacity.

``python3 -m bench.autoscale [--quick]`` runs the fleet simulator over the 32 AWS
regions with the control plane's own autoscaler sizing every region:

- follow-the-sun (one day of local-time traffic compressed into the run): the
  autoscaled fleet, then a static fleet holding each region's autoscaled peak all
  day, on the same arrivals with the same routing policy; the ratio of GPU-seconds
  and both fleets' latency;
- a load step (clients within 1,500 km of Frankfurt send 4x for 40% of the run):
  the time from the step until the busiest region's new GPUs serve;

then the same for real on loopback (``bench/_elastic_real.py``): a control plane,
an agent starting stand-in workers, a router; clients step from 1 to 8 concurrent
and back; the time until a new worker serves, worker-seconds against holding the
peak, failed requests, and a cold start from zero through the router's hold.

Simulated time is compressed (a day in minutes), so the autoscaler's windows are
scaled with it: stable 10 s, panic 2 s, scale-down delay 5 s, decisions every
second, cold start 2 s (a worker start of ~10 minutes against a day).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from bench.report import parse_args, record, table
from router.latency import great_circle_km_array
from router.policies import MeridianPolicy
from simulator.elastic import ElasticConfig, ElasticFleet
from simulator.engine import FleetSpec, SimConfig, Simulation
from simulator.metrics import PolicyResult
from simulator.scenarios import World, build_fleet, standard
from simulator.sources import configured_data_dir
from simulator.workload import Workload


def simulate(
    world: World, fleet: FleetSpec, workload: Workload, cfg: SimConfig, elastic: ElasticFleet | None
) -> tuple[PolicyResult, float]:
    policy = MeridianPolicy(default_service_ms=workload.mean_service_ms)
    sim = Simulation(policy, fleet, workload, cfg)
    sim.on_slice = elastic
    result = sim.run()
    gpu_s = elastic.gpu_seconds(sim) if elastic else float(result.server_ms.sum()) / 1000.0
    return result, gpu_s


def workload(world: World, rate: float, scenario_name: str, duration: float) -> Workload:
    sc = standard(scenario_name, rate, duration)
    day = duration if sc.follow_the_sun else 0.0
    return Workload(world.places, world.trace, rate, bursts=sc.bursts, follow_the_sun_day_s=day,
                    seed=3)  # fmt: skip


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    # the full files where MERIDIAN_DATA names them, else the shipped extracts (same arrays)
    data = configured_data_dir()
    rate, day = (2_000.0, 60.0) if args.quick else (5_000.0, 240.0)
    world = World.load(data)
    cfg = SimConfig(duration_s=day)
    econf = ElasticConfig()

    # follow the sun: elastic, then static at each region's elastic peak
    w = workload(world, rate, "follow-the-sun", day)
    start = build_fleet(world, rate, w.mean_service_ms, min_gpus=1)
    elastic = ElasticFleet(world.regions.names, econf)
    dyn, dyn_gpu_s = simulate(world, start, w, cfg, elastic)
    static_fleet = replace(start, gpus=np.maximum(elastic.peak, 1))
    sta, sta_gpu_s = simulate(world, static_fleet, workload(world, rate, "follow-the-sun", day),
                              cfg, None)  # fmt: skip

    # a load step: how long until the new capacity serves
    step_len = day / 2
    wb = workload(world, rate, "burst", step_len)
    burst = wb.bursts[0]
    stepper = ElasticFleet(world.regions.names, econf)
    simulate(world, build_fleet(world, rate, wb.mean_service_ms, min_gpus=1), wb,
             replace(cfg, duration_s=step_len), stepper)  # fmt: skip
    times = np.array([t for t, _ in stepper.timeline])
    serving = np.stack([s for _, s in stepper.timeline])
    before = serving[times < burst.start_s][-1]
    during = (times >= burst.start_s) & (times < burst.end_s)
    peak_during = serving[during].max(axis=0)
    near = great_circle_km_array(world.regions.lat, world.regions.lon, burst.lat, burst.lon)
    growth = np.where(near <= burst.radius_km, peak_during - before, -1)
    hot = int(np.argmax(growth))  # the region inside the burst that grew most
    # the first scale-up the step caused: from the step until that many GPUs serve
    asked = np.stack(stepper.asked)[:, hot]
    asked_before = asked[times < burst.start_s][-1]
    ups = np.flatnonzero((times >= burst.start_s) & (asked > asked_before))
    step_to_capacity = float("nan")
    first_target = 0
    if len(ups):
        first_target = int(asked[ups[0]])
        reached = times[(times >= times[ups[0]]) & (serving[:, hot] >= first_target)]
        if len(reached):
            step_to_capacity = float(reached[0] - burst.start_s)
    grew = times[during & (serving[:, hot] > before[hot])]
    first_serving = float(grew[0] - burst.start_s) if len(grew) else float("nan")
    statuses = [stepper.autoscaler.status(d.id) for d in stepper.targets]
    ready_after = [x for st in statuses if st is not None for x in st.ready_after_s]

    def row(name: str, r: PolicyResult, gpu_s: float) -> tuple[object, ...]:
        return (name, r.requests, r.failed, gpu_s, r.latency.quantile(0.5),
                r.latency.quantile(0.99), r.slo_met / max(r.requests, 1))  # fmt: skip

    from bench._elastic_real import run as run_real

    real = run_real(args.quick)
    ratio = dyn_gpu_s / sta_gpu_s
    body = table(
        ["fleet", "requests", "failed", "GPU-s", "p50 ms", "p99 ms", "SLO attainment"],
        [row("autoscaled", dyn, dyn_gpu_s), row("static at peak", sta, sta_gpu_s)],
    )
    body += (
        f"\n\nFollow-the-sun, {rate:,.0f} req/s over a {day:.0f} s day, 32 regions, Meridian"
        f" routing. Static fleet: {int(static_fleet.gpus.sum())} GPUs (each region's autoscaled"
        f" peak) all day. Load step: 4x near Frankfurt at {burst.start_s:.0f} s;"
        f" {world.regions.names[hot]} went from {int(before[hot])} to {int(peak_during[hot])}"
        f" GPUs serving: the first new GPU served {first_serving:.1f} s after the step, and the"
        f" first scale-up's {first_target} GPUs all served {step_to_capacity:.1f} s after it"
        f" (cold start {econf.cold_start_s:g} s)."
    )
    body += "\n\n" + table(
        ["loopback", "requests", "failed", "peak workers", "worker-s", "static peak worker-s",
         "step to new worker serving s", "cold start from zero s"],
        [("autoscaled", real.requests, real.failed, real.peak_workers, real.worker_seconds,
          real.static_peak_worker_seconds, real.step_to_new_worker_serving_s,
          real.cold_start_s)],
    )  # fmt: skip
    body += (
        "\n\nLoopback: one region, stand-in workers (100 ms per request), 1 then 8 then 1"
        " concurrent clients through the router; the static fleet holds the peak all along."
    )
    record(
        "autoscale",
        "Autoscaling: GPU-seconds and time to capacity (simulated)",
        body,
        {
            "sim_gpu_seconds_autoscaled_over_static_peak": round(ratio, 3),
            "sim_gpu_seconds_autoscaled": round(dyn_gpu_s),
            "sim_gpu_seconds_static_peak": round(sta_gpu_s),
            "sim_p99_ms_autoscaled_over_static": round(
                dyn.latency.quantile(0.99) / sta.latency.quantile(0.99), 3
            ),
            "sim_slo_attainment_autoscaled": round(dyn.slo_met / max(dyn.requests, 1), 4),
            "sim_slo_attainment_static": round(sta.slo_met / max(sta.requests, 1), 4),
            "sim_failed_autoscaled": dyn.failed,
            "sim_step_to_first_new_gpu_serving_s": round(first_serving, 2),
            "sim_step_to_capacity_s": round(step_to_capacity, 2),
            "sim_decision_to_ready_s_median": round(float(np.median(ready_after)), 2)
            if ready_after
            else float("nan"),
            "real_worker_seconds_autoscaled_over_static_peak": round(
                real.worker_seconds / max(real.static_peak_worker_seconds, 1e-9), 3
            ),
            "real_step_to_new_worker_serving_s": real.step_to_new_worker_serving_s,
            "real_cold_start_from_zero_s": real.cold_start_s,
            "real_requests": real.requests,
            "real_failed": real.failed,
        },
        quick=args.quick,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
