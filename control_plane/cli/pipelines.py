"""``refsys pipelines validate|list``: check chain files before deploying them, and see what is loaded.

Both work from the files and the configuration alone (no database, no server). ``validate`` prints one
``ok FILE (id@version)`` line per good file on stdout and one ``FILE:LINE: ITEM: message`` line per problem on
stderr, and exits 1 when there is any problem; ``list`` refuses to show a partial picture: a configured chain
that does not validate is a configuration error (exit 2), as it would stop ``refsys serve``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from control_plane.cli.common import EXIT_CHECK_FAILED, EXIT_USAGE, config_option, settings_from
from pipelines.registry import ChainRegistry, ChainSpecError, check_chain_files
from pipelines.spec import ChainSpec


def register(main: click.Group) -> None:
    main.add_command(pipelines)


@click.group()
def pipelines() -> None:
    """Production chain specs."""


@pipelines.command("validate")
@config_option
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def validate(config_file: Path | None, files: tuple[Path, ...]) -> None:
    """Check chain FILES against the chain model and the configuration (processors, lanes)."""
    settings = settings_from(config_file)
    failed = False
    for check in check_chain_files(files, settings):
        if check.spec is None:
            failed = True
            for problem in check.problems:
                click.echo(problem, err=True)
        else:
            click.echo(f"ok {check.path} ({check.spec.key})")
    if failed:
        raise SystemExit(EXIT_CHECK_FAILED)


@pipelines.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def list_chains(config_file: Path | None, as_json: bool) -> None:
    """The chains refsys loads (bundled and production.chain_dirs), every version, with the file each came from."""
    settings = settings_from(config_file)
    try:
        registry = ChainRegistry.load(settings)
    except ChainSpecError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        raise SystemExit(EXIT_USAGE) from None
    rows = [summary(spec, registry.origin(spec.id, spec.version)) for spec in registry.all()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [
        [row["id"], row["version"], row["mission"], row["lane"], _triggers(row["triggers"]), row["origin"]]
        for row in rows
    ]
    header = ["ID", "VERSION", "MISSION", "LANE", "TRIGGERS", "ORIGIN"]
    widths = [max(len(line[column]) for line in [header, *table]) for column in range(len(header) - 1)]
    for line in [header, *table]:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1]
        )


def summary(spec: ChainSpec, origin: str) -> dict[str, Any]:
    """What ``list --json`` shows of a chain version."""
    return {
        "id": spec.id,
        "version": spec.version,
        "mission": spec.mission,
        "lane": spec.lane,
        "description": spec.description,
        "steps": [step.name for step in spec.steps],
        "triggers": spec.triggers.model_dump(),
        "origin": origin,
    }


def _triggers(triggers: dict[str, Any]) -> str:
    parts = [f"product {product_type}" for product_type in triggers["product_types"]]
    parts += [f"cron {expression}" for expression in triggers["cron"]]
    parts += ["manual"] if triggers["manual"] else []
    return "; ".join(parts) or "-"
