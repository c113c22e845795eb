"""Dispatch: no-op steps through the run engine and the local executor, on 2 cores.

Targets (issue: production chains): at least 50 steps/s dispatched, trigger-to-start p99 under 500 ms
(anchors: Kueue admits about 43 workloads/s in its own test; Argo about 3 workflows/s in a user's test).

The engine, the catalog and the local executor run in this process (``refsys serve`` runs the same objects);
this process and every step it starts are pinned to cores 0 and 1. The chain has one step running the bundled
``noop`` processor (exits 0, writes nothing), so what is measured is the control plane's work per step:
claiming, the supervisor process, the result, the bookkeeping, the run's end.

- **burst**: ``--steps`` runs submitted at once. Throughput = steps / (last step ended - first submission).
  Latency here includes queueing behind the burst, so it is reported but is not the target's figure.
- **paced**: ``--paced-steps`` runs submitted open-loop at ``--paced-rate`` per second (default: half the burst
  throughput, capped at 50/s), as production requests arrive. Trigger-to-start latency = step started (the
  executor has launched it) - run submitted (``runs.created_at``); p50/p99 over the paced runs. This is the
  figure the target is about.
- **paced during a campaign**: the same paced load again while a reprocessing campaign over 50 products (one
  1 s step each) runs in the throttled lane: acceptance 8's "NRT runs keep their usual start latency",
  measured (compare its trigger-to-start with the paced one's).
- CPU: this process's own CPU time (user + system) per step, separately from the step processes' (the fork
  server, the supervisors and the steps).
  Peak RSS: this process's ``ru_maxrss``.

    python bench/dispatch_bench.py [--steps 2000] [--paced-steps 1000] [--paced-rate R] [--slots 32]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import report
from control_plane.core import schema
from control_plane.core.audit.trail import Actor
from control_plane.core.config import Settings
from control_plane.core.services import open_engine, open_services
from pipelines import tables
from pipelines.engine import RunRequest
from pipelines.production import Production
from pipelines.triggers.reprocessing import CampaignRequest

CAMPAIGN_PRODUCTS = 50
CAMPAIGN_STEP_S = 1
CHAIN = """
id: noop
version: "1.0"
mission: S2
lane: NRT
max_concurrent_runs: 100000
steps:
  - name: noop
    processor: {name: noop, version: "1.0"}
    timeout_s: 60
    retries: {max_attempts: 1}
outputs:
  - {product_type: NOOP, step: noop, pattern: "*.none", timeliness: NRT}
"""
REPROCESSING_CHAIN = f"""
id: reproc
version: "1.0"
mission: S2
lane: NTC
inputs: [{{product_type: T_IN}}]
steps:
  - name: redo
    processor: {{name: sleep, version: "1.0"}}
    args: ["{CAMPAIGN_STEP_S}"]
    timeout_s: 60
    retries: {{max_attempts: 1}}
outputs:
  - {{product_type: T_RE, step: redo, pattern: "*.none", timeliness: NTC}}
"""
ACTOR = Actor(subject="bench", roles=("operator",))


NOOP_COMMAND = ["/bin/true"]
PYTHON_NOOP_COMMAND = ["{python}", "-m", "pipelines.processors.noop"]


def settings_for(root: Path, slots: int, command: list[str]) -> Settings:
    chains = root / "chains"
    chains.mkdir()
    (chains / "noop.yaml").write_text(CHAIN)
    (chains / "reproc.yaml").write_text(REPROCESSING_CHAIN)
    return Settings(
        data_dir=root / "var",
        logging={"access_log": False},
        production={
            "bundled_chains": False,
            "chain_dirs": [str(chains)],
            "max_parallel_steps": slots,
            "lanes": {
                "NRT": {"priority": 80, "concurrency": slots, "reserved": 0},
                "NTC": {"priority": 40, "concurrency": 4, "reserved": 0},
                "REPROCESSING": {"priority": 0, "concurrency": 2, "throttled": True},
            },
            "cron": False,
            # The step runs /bin/true: a no-op whose own start costs next to nothing, so the figures are the
            # control plane's (a Python processor adds its interpreter's start, ~20 ms of CPU, to every step;
            # ``--python-noop`` measures that variant with the bundled ``pipelines.processors.noop``).
            "processors": [
                {"name": "noop", "version": "1.0", "command": command},
                {"name": "sleep", "version": "1.0", "command": ["/bin/sleep"]},
            ],
        },
    )


def cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def forkserver_cpu_s(production: Production) -> float:
    """CPU of the local executor's fork server and of everything it reaped (the supervisors, which reap the
    steps): the step processes' share, which ``RUSAGE_CHILDREN`` of this process no longer sees."""
    server = getattr(getattr(production.executor, "_forkserver", None), "_process", None)
    if server is None:
        return 0.0
    try:
        stat = Path(f"/proc/{server.pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def step_rows(services: Any, run_ids: list[str]) -> list[Any]:
    with services.engine.connect() as connection:
        return list(
            connection.execute(
                sa.select(
                    tables.runs.c.created_at,
                    tables.run_steps.c.started_at,
                    tables.run_steps.c.ended_at,
                    tables.run_steps.c.state,
                )
                .join(tables.run_steps, tables.run_steps.c.run_id == tables.runs.c.id)
                .where(tables.runs.c.id.in_(run_ids))
            )
        )


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def latency_ms(rows: list[Any]) -> dict[str, float]:
    latencies = [(row.started_at - row.created_at).total_seconds() * 1000 for row in rows if row.started_at]
    return {
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
    }


def wait_done(production: Production, timeout_s: float) -> None:
    if not production.engine.run_until_idle(timeout_s):
        raise SystemExit(f"runs still active after {timeout_s} s")


def submit(production: Production, count: int, tag: str) -> list[str]:
    return [
        production.engine.submit(RunRequest(chain_id="noop", idempotency_key=f"{tag}-{index}"), ACTOR)[0]
        for index in range(count)
    ]


def submit_paced(production: Production, count: int, rate: float, tag: str) -> list[str]:
    """Open-loop: run i is submitted at start + i / rate whatever happened before."""
    run_ids: list[str] = []
    start = time.monotonic()
    for index in range(count):
        pause = start + index / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        run_ids += submit(production, 1, f"{tag}-{index}")
    return run_ids


def open_campaign(production: Production, root: Path, *, products: int) -> str:
    """A campaign of the ``reproc`` chain over ``products`` input products registered for it."""
    inputs = root / "inputs"
    inputs.mkdir()
    ids = []
    for index in range(products):
        path = inputs / f"IN_{index:03d}.dat"
        path.write_bytes(b"x" * 1024)
        ids.append(
            production.catalog.register_external(path, product_type="T_IN", mission="S2", actor=ACTOR).id
        )
    created = production.campaigns.create(CampaignRequest(chain_id="reproc", product_ids=ids), ACTOR)
    return str(created["id"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--paced-steps", type=int, default=1000)
    parser.add_argument("--paced-rate", type=float, default=None)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument(
        "--python-noop", action="store_true", help="steps run the bundled Python noop processor"
    )
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0, 1})  # children (the step processes) inherit it

    with tempfile.TemporaryDirectory(prefix="refsys-dispatch-") as tmp:
        command = PYTHON_NOOP_COMMAND if args.python_noop else NOOP_COMMAND
        settings = settings_for(Path(tmp), args.slots, command)
        settings.data_dir.mkdir(parents=True)
        fresh = open_engine(settings)
        schema.upgrade(fresh)
        fresh.dispose()
        services = open_services(settings)
        production = Production(settings, services.engine, services.bus, services.audit)
        production.start()
        try:
            # Warm-up: imports, first processes, database pages.
            submit(production, 20, "warmup")
            wait_done(production, 120)

            cpu_before = cpu_s(resource.RUSAGE_SELF)
            children_before = cpu_s(resource.RUSAGE_CHILDREN) + forkserver_cpu_s(production)
            began = time.monotonic()
            burst = submit(production, args.steps, "burst")
            submitted_s = time.monotonic() - began
            wait_done(production, 1800)
            elapsed = time.monotonic() - began
            cpu_used = cpu_s(resource.RUSAGE_SELF) - cpu_before
            children_used = cpu_s(resource.RUSAGE_CHILDREN) + forkserver_cpu_s(production) - children_before
            rows = step_rows(services, burst)
            succeeded = sum(1 for row in rows if row.state == "succeeded")
            first_submit = min(row.created_at for row in rows)
            last_end = max(row.ended_at for row in rows if row.ended_at)
            throughput = len(rows) / (last_end - first_submit).total_seconds()
            print(f"burst: {len(rows)} steps, {throughput:.1f} steps/s", file=sys.stderr)

            rate = args.paced_rate or min(50.0, throughput / 2)
            paced = submit_paced(production, args.paced_steps, rate, "paced")
            wait_done(production, 1800)
            paced_rows = step_rows(services, paced)

            # The same paced load while a reprocessing campaign over 50 products fills its throttled lane.
            campaign = open_campaign(production, Path(tmp), products=CAMPAIGN_PRODUCTS)
            during = submit_paced(production, args.paced_steps, rate, "during-campaign")
            campaign_busy = not (production.campaigns.status(campaign) or {}).get("done")
            wait_done(production, 1800)
            during_rows = step_rows(services, during)
        finally:
            production.stop()
            services.close()

    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {
        "config": {
            "slots": args.slots,
            "executor": "local",
            "step_command": " ".join(command),
            "database": "sqlite (embedded)",
            "cores": "0,1",
        },
        "burst": {
            "steps": len(rows),
            "succeeded": succeeded,
            "submission_s": round(submitted_s, 2),
            "wall_s": round(elapsed, 2),
            "steps_per_s": round(throughput, 1),
            "latency_with_queueing": latency_ms(rows),
            "control_plane_cpu_ms_per_step": round(cpu_used * 1000 / len(rows), 2),
            "step_processes_cpu_ms_per_step": round(children_used * 1000 / len(rows), 2),
        },
        "paced": {
            "steps": len(paced_rows),
            "rate_per_s": round(rate, 1),
            "succeeded": sum(1 for row in paced_rows if row.state == "succeeded"),
            "trigger_to_start": latency_ms(paced_rows),
        },
        "paced_during_a_reprocessing_campaign": {
            "campaign_products": CAMPAIGN_PRODUCTS,
            "campaign_step_s": CAMPAIGN_STEP_S,
            "campaign_still_running_when_the_paced_load_ended": campaign_busy,
            "steps": len(during_rows),
            "rate_per_s": round(rate, 1),
            "succeeded": sum(1 for row in during_rows if row.state == "succeeded"),
            "trigger_to_start": latency_ms(during_rows),
        },
        "peak_rss_mib": round(peak_rss_mib, 1),
        "targets": {"steps_per_s": 50, "p99_ms": 500},
        "met": throughput >= 50 and latency_ms(paced_rows)["p99_ms"] < 500,
    }
    report("dispatch-python-noop" if args.python_noop else "dispatch", figures)


if __name__ == "__main__":
    main()
