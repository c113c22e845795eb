"""``refsys run``: start a chain and follow it, and every run it triggers, to the end.

In-process by default: the engine, the configured executor and the systematic trigger run inside the command
until no run is active and no product event is left, so a chain's downstream chains (started by its products)
are followed too. With ``--url`` the run is requested from a server and followed through the API.

Progress goes to stderr as one line per change (run or step state, attempt); the summary goes to stdout as
JSON. Exit 0 when every followed run succeeded, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx
import sqlalchemy as sa

from control_plane.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_USAGE,
    config_option,
    fail,
    open_state,
    open_trail,
    settings_from,
)
from control_plane.core import clock
from control_plane.core.audit.trail import Actor
from control_plane.core.bus import create_bus
from pipelines import tables
from pipelines.engine import BadRunRequest, RunRequest
from pipelines.engine.states import RUN_TERMINAL
from pipelines.production import Production, ProductionConfigError, check_configuration

POLL_S = 0.25


def register(main: click.Group) -> None:
    main.add_command(run)


def _parameters(pairs: tuple[str, ...]) -> dict[str, Any]:
    parameters: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            fail(f"--param {pair!r}: expected NAME=VALUE", EXIT_USAGE)
        parameters[name] = value
    return parameters


@click.command("run")
@click.argument("chain")
@click.option("--version", "chain_version", help="Chain version (default: the newest).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="A run parameter (repeatable).")
@click.option("--input", "inputs", multiple=True, metavar="PRODUCT_ID", help="An input product (repeatable).")
@click.option("--lane", help="Lane to run in (default: the chain's).")
@click.option(
    "--timeout", "timeout_s", type=float, default=3600.0, show_default=True, help="Give up after (s)."
)
@click.option(
    "--url", envvar="REFSYS_URL", help="Submit to this server and follow it (token in REFSYS_TOKEN)."
)
@config_option
def run(
    chain: str,
    chain_version: str | None,
    params: tuple[str, ...],
    inputs: tuple[str, ...],
    lane: str | None,
    timeout_s: float,
    url: str | None,
    config_file: Path | None,
) -> None:
    """Run CHAIN and follow it (and every run it triggers) until they end, showing progress."""
    request = RunRequest(
        chain_id=chain,
        chain_version=chain_version,
        parameters=_parameters(params),
        inputs=list(inputs),
        lane=lane,
        trigger="manual",
    )
    summary = _run_remote(url, request, timeout_s) if url else _run_local(config_file, request, timeout_s)
    click.echo(json.dumps(summary, indent=1, default=str))
    if not summary["runs"] or any(item["state"] != "succeeded" for item in summary["runs"]):
        sys.exit(EXIT_CHECK_FAILED)


def _run_local(config_file: Path | None, request: RunRequest, timeout_s: float) -> dict[str, Any]:
    settings = settings_from(config_file)
    try:
        check_configuration(settings)
    except ProductionConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    engine = open_state(settings)
    bus = create_bus(settings)
    production = Production(settings, engine, bus, open_trail(settings, engine))
    trigger = production.systematic
    started = clock.utcnow()
    try:
        try:
            first, _created = production.engine.submit(request, Actor.local_cli())
        except BadRunRequest as exc:
            fail(str(exc), EXIT_USAGE)
        production.start(triggers=False)  # this command drives the systematic trigger; no cron
        progress = _Progress()
        deadline = time.monotonic() + timeout_s
        views: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            triggered = trigger.run_once(timeout_s=POLL_S)
            views = _followed(engine, first, started)
            progress.show(views)
            # Outputs are announced before their run ends: once every followed run has ended, one more empty
            # poll proves no product of theirs is left to start a run.
            if not triggered and _all_ended(views) and not trigger.run_once(timeout_s=POLL_S):
                break
        views = _followed(engine, first, started)
        return {"runs": [_summary(view) for view in views], "timed_out": not _all_ended(views)}
    finally:
        production.stop()
        bus.close()
        engine.dispose()


def _followed(engine: sa.Engine, first: str, since: Any) -> list[dict[str, Any]]:
    """The run this command started and its descendants: the systematic runs fed by products of a followed run
    (not other runs that happen to start meanwhile, e.g. those of a server on the same database)."""
    runs, products = tables.runs, tables.products
    with engine.connect() as connection:
        candidates = connection.execute(
            sa.select(runs.c.id, runs.c.chain_id, runs.c.state, runs.c.reason, runs.c.trigger, runs.c.inputs)
            .where(
                sa.or_(
                    runs.c.id == first, sa.and_(runs.c.trigger == "systematic", runs.c.created_at >= since)
                )
            )
            .order_by(runs.c.created_at)
        ).all()
        made = connection.execute(
            sa.select(products.c.run_id, products.c.id, products.c.name, products.c.state).where(
                products.c.run_id.in_([row.id for row in candidates])
            )
        ).all()
        followed_ids = {first}
        produced = {product.id for product in made if product.run_id == first}
        for row in candidates:  # in creation order: a descendant is created after its ancestor's products
            if row.id not in followed_ids and produced & set(row.inputs or []):
                followed_ids.add(row.id)
                produced |= {product.id for product in made if product.run_id == row.id}
        rows = [row for row in candidates if row.id in followed_ids]
        steps = connection.execute(
            sa.select(tables.run_steps.c.run_id, tables.run_steps.c.name, tables.run_steps.c.state,
                      tables.run_steps.c.attempt)
            .where(tables.run_steps.c.run_id.in_(followed_ids))
        ).all()  # fmt: skip
    return [
        {
            "id": row.id,
            "chain": row.chain_id,
            "state": row.state,
            "trigger": row.trigger,
            "reason": row.reason,
            "steps": {step.name: (step.state, step.attempt) for step in steps if step.run_id == row.id},
            "products": [f"{p.name} ({p.state})" for p in made if p.run_id == row.id],
        }
        for row in rows
    ]


def _all_ended(views: list[dict[str, Any]]) -> bool:
    return bool(views) and all(view["state"] in RUN_TERMINAL for view in views)


def _summary(view: dict[str, Any]) -> dict[str, Any]:
    return {key: view[key] for key in ("id", "chain", "state", "trigger", "reason", "products")}


class _Progress:
    """One stderr line per change of a run's or a step's state, with a clock; nothing when nothing moved."""

    def __init__(self) -> None:
        self._seen: dict[str, Any] = {}

    def show(self, views: list[dict[str, Any]]) -> None:
        for view in views:
            short = view["id"][-8:]
            key = view["id"]
            if self._seen.get(key) != view["state"]:
                self._seen[key] = view["state"]
                self._line(f"run {short} {view['chain']} ({view['trigger']}): {view['state']}")
            for name, (state, attempt) in sorted(view["steps"].items()):
                step_key = f"{key}/{name}"
                if self._seen.get(step_key) != (state, attempt):
                    self._seen[step_key] = (state, attempt)
                    self._line(f"  run {short} step {name}: {state} (attempt {attempt})")

    @staticmethod
    def _line(text: str) -> None:
        click.echo(f"{time.strftime('%H:%M:%S')} {text}", err=True)


def _run_remote(url: str, request: RunRequest, timeout_s: float) -> dict[str, Any]:
    token = os.environ.get("REFSYS_TOKEN")
    if not token:
        fail("--url needs a token in REFSYS_TOKEN", EXIT_USAGE)
    body = {
        "chain": request.chain_id,
        "version": request.chain_version,
        "parameters": request.parameters,
        "inputs": request.inputs,
        "lane": request.lane,
    }
    progress = _Progress()
    with httpx.Client(
        base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        try:
            answer = http.post("/api/v1/runs", json=body)
        except httpx.HTTPError as exc:
            fail(f"cannot reach {url}: {exc}", EXIT_USAGE)
        if answer.status_code not in (200, 201):
            fail(f"{url} refused the run: {answer.status_code} {answer.text[:300]}", EXIT_USAGE)
        view = answer.json()
        deadline = time.monotonic() + timeout_s
        while view["state"] not in RUN_TERMINAL and time.monotonic() < deadline:
            time.sleep(POLL_S)
            view = _poll(http, view)
            progress.show([_remote_view(view)])
    return {"runs": [{"id": view["id"], "chain": view["chain"], "state": view["state"],
                      "trigger": view["trigger"], "reason": view.get("reason"), "products": []}]}  # fmt: skip


def _poll(http: httpx.Client, view: dict[str, Any]) -> dict[str, Any]:
    """The run's new view; the last one while the server is unreachable or failing (a restart, a deploy): the
    run goes on there, so following it goes on too, until ``--timeout``."""
    try:
        answer = http.get(f"/api/v1/runs/{view['id']}")
    except httpx.HTTPError as exc:
        click.echo(f"refsys: following run {view['id']}: {exc}; retrying", err=True)
        return view
    if answer.status_code >= 500:
        click.echo(
            f"refsys: following run {view['id']}: server answered {answer.status_code}; retrying", err=True
        )
        return view
    if answer.status_code != 200:
        fail(f"following run {view['id']}: {answer.status_code} {answer.text[:300]}", EXIT_USAGE)
    result: dict[str, Any] = answer.json()
    return result


def _remote_view(view: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": view["id"],
        "chain": view["chain"],
        "state": view["state"],
        "trigger": view["trigger"],
        "steps": {step["name"]: (step["state"], step["attempt"]) for step in view["steps"]},
    }
