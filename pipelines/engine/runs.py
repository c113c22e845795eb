"""Reading runs from the database: the rows the engine works on, and the views the API shows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from pipelines import tables
from pipelines.engine.requests import RunNotFound
from pipelines.spec import ChainSpec, InputSpec

MAX_PAGE = 500


@dataclass(frozen=True)
class RunRow:
    """The columns of a run the engine needs while it schedules."""

    id: str
    chain_id: str
    chain_version: str
    mission: str
    lane: str
    state: str
    trigger: str
    parameters: dict[str, Any]
    inputs: list[str]
    campaign_id: str | None
    baseline: str | None
    t0: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def columns(cls) -> list[sa.Column[Any]]:
        return [tables.runs.c[name] for name in cls.__dataclass_fields__]

    @classmethod
    def of(cls, row: sa.Row[Any]) -> RunRow:
        values = row._mapping
        return cls(**{name: values[name] for name in cls.__dataclass_fields__})

    @property
    def reprocessing(self) -> bool:
        return self.trigger == "reprocessing" or self.campaign_id is not None


def load_run(connection: sa.Connection, run_id: str) -> RunRow:
    row = connection.execute(sa.select(*RunRow.columns()).where(tables.runs.c.id == run_id)).first()
    if row is None:
        raise RunNotFound(f"run {run_id} does not exist")
    return RunRow.of(row)


def product_rows(connection: sa.Connection, product_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Catalog rows of ``product_ids`` that exist, by id."""
    if not product_ids:
        return {}
    products = tables.products
    rows = connection.execute(sa.select(products).where(products.c.id.in_(list(product_ids))))
    return {row.id: dict(row._mapping) for row in rows}


def missing_inputs(
    chain: ChainSpec, products: Mapping[str, Mapping[str, Any]]
) -> list[tuple[InputSpec, int]]:
    """Each input of ``chain`` that ``products`` do not satisfy, with how many products it still lacks."""
    missing = []
    for spec in chain.inputs:
        have = sum(1 for product in products.values() if spec.accepts(product))
        if have < spec.count:
            missing.append((spec, spec.count - have))
    return missing


def run_view(connection: sa.Connection, run_id: str) -> dict[str, Any]:
    """A run with its steps and every attempt of each, as the API shows it."""
    runs, steps, executions = tables.runs, tables.run_steps, tables.step_executions
    row = connection.execute(sa.select(runs).where(runs.c.id == run_id)).first()
    if row is None:
        raise RunNotFound(f"run {run_id} does not exist")
    view = _public_run(dict(row._mapping))
    attempts: dict[str, list[dict[str, Any]]] = {}
    for execution in connection.execute(
        sa.select(executions).where(executions.c.run_id == run_id).order_by(executions.c.attempt)
    ):
        item = dict(execution._mapping)
        attempts.setdefault(item.pop("step"), []).append(
            {
                key: item[key]
                for key in (
                    "attempt",
                    "executor",
                    "executor_ref",
                    "image",
                    "started_at",
                    "ended_at",
                    "exit_code",
                    "outcome",
                )
            }
        )
    view["steps"] = [
        {
            "name": step.name,
            "state": step.state,
            "lane": step.lane,
            "attempt": step.attempt,
            "max_attempts": step.max_attempts,
            "not_before": step.not_before,
            "ready_at": step.ready_at,
            "started_at": step.started_at,
            "ended_at": step.ended_at,
            "exit_code": step.exit_code,
            "reason": step.reason,
            "attempts": attempts.get(step.name, []),
        }
        for step in connection.execute(sa.select(steps).where(steps.c.run_id == run_id))
    ]
    return view


def list_runs(
    connection: sa.Connection,
    *,
    state: str | None = None,
    chain: str | None = None,
    parked: bool = False,
    cursor: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """One page of runs, newest first (ids are UUIDv7, so id order is creation order), after ``cursor``."""
    runs = tables.runs
    query = sa.select(runs).order_by(runs.c.id.desc()).limit(min(limit, MAX_PAGE))
    if state is not None:
        query = query.where(runs.c.state == state)
    if chain is not None:
        query = query.where(runs.c.chain_id == chain)
    if parked:
        query = query.where(runs.c.parked_at.is_not(None))
    if cursor is not None:
        query = query.where(runs.c.id < cursor)
    return [_public_run(dict(row._mapping)) for row in connection.execute(query)]


def _public_run(row: dict[str, Any]) -> dict[str, Any]:
    row["chain"] = row.pop("chain_id")
    return row


def published_by(db: sa.Engine, run_id: str, steps: list[str]) -> list[str]:
    """Products the steps a step ``needs`` published in the same run: a DAG's steps feed each other through the
    catalog (L0 -> L1 -> L2), so a quarantined intermediate product never reaches the next step, and each
    product's lineage names the products it was made from."""
    if not steps:
        return []
    products = tables.products
    with db.connect() as connection:
        return list(
            connection.execute(
                sa.select(products.c.id)
                .where(
                    products.c.run_id == run_id, products.c.step.in_(steps), products.c.state == "published"
                )
                .order_by(products.c.created_at, products.c.id)
            ).scalars()
        )
