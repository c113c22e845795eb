"""``refsys rules validate|test``: check Sigma rule files before deploying them, and try them on events.

``validate`` works from the files and the configuration alone: the given files are read together with the
configured base (bundled rules and ``detection.rule_dirs``), so a correlation may name a base rule, and every
rule of the given files must parse, route and map every field, and compile: detection would skip it otherwise.
One ``ok FILE (N rules)`` line per good file on stdout, one ``FILE:LINE: REF: CLASS: reason`` line per problem
on stderr; exit 1 when there is any problem.

``test`` runs only the given rule files, over a file of events or over the stored events of a time range (a
backtest), through the same evaluation the serving stages run, and prints one JSON line per match and per
correlation alert (DESIGN.md section 4). With ``--url`` the server does the work (``POST /api/v1/rules/test``).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import httpx
import orjson

from control_plane.cli.common import EXIT_CHECK_FAILED, EXIT_USAGE, config_option, fail, settings_from
from control_plane.core import clock
from security.detection import rule_testing
from security.detection.ruleset import RULE_SUFFIXES, RuleSet, RuleText, build, configured_texts
from security.intake.identity import FileSlice, fingerprint
from security.sources.registry import ADAPTERS
from security.telemetry import open_event_store

URL_TIMEOUT_S = 600.0


def register(main: click.Group) -> None:
    main.add_command(rules)


@click.group()
def rules() -> None:
    """Sigma rules: validate files, test them on events or backtest them on stored events."""


def rule_files(paths: tuple[Path, ...]) -> list[Path]:
    """The given files, and the rule files under the given directories (recursively, in path order)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in RULE_SUFFIXES and p.is_file())
        else:
            files.append(path)
    return files


def read_texts(paths: tuple[Path, ...]) -> list[RuleText]:
    texts = []
    for path in rule_files(paths):
        try:
            texts.append(RuleText(path.read_text(encoding="utf-8"), "directory", str(path)))
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"{path}: cannot read: {exc}", EXIT_USAGE)
    return texts


def problem_lines(ruleset: RuleSet, paths: set[str]) -> dict[str, list[str]]:
    """Per given file, one line per rule of it that would not run (with its class) or document that did not parse."""
    found: dict[str, list[str]] = {path: [] for path in paths}
    for problem in ruleset.problems:
        if problem.path not in paths:
            continue
        info = ruleset.infos.get(problem.rule)
        rule_class = info.rule_class if info is not None and info.text.path == problem.path else "invalid"
        reason = " ".join(problem.reason.split())  # one line per problem, whatever the parser wrote
        found[problem.path].append(f"{problem.where()}: {problem.rule}: {rule_class}: {reason}")
    return found


@rules.command("validate")
@config_option
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def validate(config_file: Path | None, paths: tuple[Path, ...]) -> None:
    """Check Sigma rule files (or directories of them): parse, route, map every field, compile."""
    settings = settings_from(config_file)
    texts = read_texts(paths)
    if not texts:
        fail(f"no rule files ({', '.join(RULE_SUFFIXES)}) under {', '.join(map(str, paths))}", EXIT_USAGE)
    base = configured_texts(settings.detection.bundled_rules, settings.detection.rule_dirs)
    given = {text.path for text in texts}
    ruleset = build([t for t in base if t.path not in given] + texts, dict(settings.detection.placeholders))
    failed = False
    for text in texts:
        lines = problem_lines(ruleset, {text.path})[text.path]
        count = sum(1 for info in ruleset.infos.values() if info.text.path == text.path)
        if count == 0 and not lines:
            lines = [f"{text.path}: no Sigma rule in the file"]
        if lines:
            failed = True
            for line in lines:
                click.echo(line, err=True)
        else:
            click.echo(f"ok {text.path} ({count} {'rule' if count == 1 else 'rules'})")
    if failed:
        raise SystemExit(EXIT_CHECK_FAILED)


def _moment(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        return clock.parse_rfc3339(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an RFC 3339 time with a zone", param_hint=option) from None


@rules.command("test")
@config_option
@click.option(
    "--rules",
    "rule_paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Rule files or directories (repeatable).",
)
@click.option(
    "--events",
    "events_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="NDJSON events: raw lines of --source, or normalised ECS documents without --source.",
)
@click.option("--source", type=click.Choice(sorted(ADAPTERS)), help="Source adapter of the --events lines.")
@click.option(
    "--from", "start", help="Backtest over the stored events from this RFC 3339 time (inclusive)..."
)
@click.option("--to", "end", help="...to this one (exclusive).")
@click.option("--url", envvar="REFSYS_URL", default=None,
              help="A running refsys server (token in REFSYS_TOKEN); without it, in-process.")  # fmt: skip
def test(
    config_file: Path | None,
    rule_paths: tuple[Path, ...],
    events_file: Path | None,
    source: str | None,
    start: str | None,
    end: str | None,
    url: str | None,
) -> None:
    """Run the rules of --rules over --events FILE or the stored events --from T --to T; one JSON line per
    match and per correlation alert."""
    since, until = _moment(start, "--from"), _moment(end, "--to")
    backtest = since is not None or until is not None
    if (events_file is None) == (not backtest):
        fail("give either --events FILE or --from T --to T", EXIT_USAGE)
    if backtest and (since is None or until is None or until <= since):
        fail("a backtest needs --from and --to, with --from before --to", EXIT_USAGE)
    if source is not None and events_file is None:
        fail("--source applies to --events", EXIT_USAGE)
    texts = read_texts(rule_paths)
    if url:
        lines = _remote(url, texts, events_file, source, since, until)
    else:
        lines = _local(config_file, texts, events_file, source, since, until)
    for line in lines:
        click.echo(rule_testing.dumps(line))


def _local(
    config_file: Path | None,
    texts: list[RuleText],
    events_file: Path | None,
    source: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[dict[str, Any]]:
    settings = settings_from(config_file)
    ruleset = build(texts, dict(settings.detection.placeholders))
    if ruleset.problems:
        for problems in problem_lines(ruleset, {t.path for t in texts}).values():
            for problem in problems:
                click.echo(problem, err=True)
        raise SystemExit(EXIT_CHECK_FAILED)
    if events_file is not None:
        origin = FileSlice(fingerprint(events_file), 0)  # the ids `refsys ingest` gives the same file
        docs, rejections = rule_testing.normalise(events_file.read_bytes(), source=source, origin=origin)
        for rejection in rejections:
            click.echo(f"{events_file}:{rejection.line.number}: {rejection.reason}", err=True)
        return rule_testing.run(ruleset, docs)[0]
    assert since is not None and until is not None
    store = open_event_store(settings)
    try:
        lines, _count = rule_testing.run(ruleset, rule_testing.stored_events(store, since, until))
    finally:
        store.close()
    return lines


def _remote(
    url: str,
    texts: list[RuleText],
    events_file: Path | None,
    source: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[dict[str, Any]]:
    token = os.environ.get("REFSYS_TOKEN", "").strip()
    if not token:
        fail("--url needs a bearer token in REFSYS_TOKEN", EXIT_USAGE)
    body: dict[str, Any] = {"rules": [text.text for text in texts]}
    if events_file is not None and source is not None:
        body |= {"source": source, "lines": events_file.read_text(encoding="utf-8").splitlines()}
    elif events_file is not None:
        try:
            body["events"] = [
                orjson.loads(line) for line in events_file.read_bytes().splitlines() if line.strip()
            ]
        except orjson.JSONDecodeError as exc:
            fail(f"{events_file}: not NDJSON: {exc}", EXIT_USAGE)
    else:
        assert since is not None and until is not None
        body |= {"from": clock.rfc3339(since), "to": clock.rfc3339(until)}
    try:
        response = httpx.post(
            url.rstrip("/") + "/api/v1/rules/test",
            content=orjson.dumps(body),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=URL_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}", EXIT_USAGE)
    if response.status_code == 422:
        for error in response.json().get("errors", []):
            click.echo(f"{error.get('location')}: {error.get('message')}", err=True)
        raise SystemExit(EXIT_CHECK_FAILED)
    if response.status_code != 200:
        fail(f"server answered {response.status_code}: {response.text[:300]}", EXIT_CHECK_FAILED)
    result = response.json()
    for rejected in result.get("rejected", []):
        click.echo(f"{events_file}:{rejected['line']}: {rejected['reason']}", err=True)
    return [*result["matches"], *result["correlations"]]
