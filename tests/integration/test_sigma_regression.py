"""Acceptance 1 of issue 5: SigmaHQ's regression suite through the rule compiler, and against pySigma's SQLite
backend on the same flattened events.

Each ``info.yml`` under ``regression_data`` names a rule and an event dump (``.evtx`` converted to JSON; the
binaries are absent on purpose). Log-source routing is bypassed: every rule meets every dump, so the test also
measures what else each rule hits, which must equal what the SQLite backend's generated SQL finds.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sigma.backends.sqlite import sqliteBackend
from sigma.collection import SigmaCollection
from sigma.rule import SigmaRule

from security.sigma import CompiledRule, SigmaCompileError, compile_rule
from tests.shared_data import shared_file
from tests.sigma_sqlite import connect, quoted, sqlite_value

RULE_DIRS = ("rules", "rules-emerging-threats", "rules-threat-hunting", "rules-placeholder")


@dataclass(frozen=True)
class Case:
    """One regression test: the rule it names and the events of its dump."""

    info: Path
    rule_id: str
    events: tuple[dict[str, Any], ...]


def _json_objects(text: str) -> Iterator[Any]:
    """The dumps hold one or several concatenated JSON documents (one per event record)."""
    decoder = json.JSONDecoder()
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return
        obj, index = decoder.raw_decode(text, index)
        yield obj


def _attributes_and_text(prefix: str, node: Any, out: dict[str, Any]) -> None:
    """``Provider: {#attributes: {Name: x}}`` -> ``Provider_Name``; ``EventID: {#text: 4}`` -> ``EventID``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "#attributes" and isinstance(value, dict):
                for attr, attr_value in value.items():
                    out[f"{prefix}_{attr}"] = attr_value
            elif key == "#text":
                out[prefix] = value
            else:
                _attributes_and_text(f"{prefix}_{key}", value, out)
    else:
        out[prefix] = node


def _data_fields(node: Any, out: dict[str, Any]) -> None:
    """EventData/UserData: named ``Data`` items and plain children become top-level Sigma field names.

    Sigma writes data names without their spaces (Defender's ``Source Name`` is ``SourceName``).
    """
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key == "#attributes":
            continue
        if key == "Data" and isinstance(value, list) and all(isinstance(v, dict) for v in value):
            for item in value:
                name = item.get("#attributes", {}).get("Name")
                if name:
                    out[name.replace(" ", "")] = item.get("#text")
        elif isinstance(value, dict) and "#text" not in value:
            _data_fields(value, out)  # UserData wraps its fields in one more element
        elif isinstance(value, dict):
            out[key.replace(" ", "")] = value["#text"]
        else:
            out[key.replace(" ", "")] = value


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """Sigma's Windows field names: System's children by name (attributes as ``Parent_Attr``), then the data."""
    event = record.get("Event", record)
    out: dict[str, Any] = {}
    for key, value in (event.get("System") or {}).items():
        _attributes_and_text(key, value, out)
    _data_fields(event.get("EventData"), out)
    _data_fields(event.get("UserData"), out)
    return out


def _rule_paths(root: Path) -> dict[str, Path]:
    """Rule id -> file, over every SigmaHQ rule directory present."""
    id_line = re.compile(r"^id:\s*([0-9a-fA-F-]{36})\s*$", re.MULTILINE)
    index: dict[str, Path] = {}
    for directory in RULE_DIRS:
        for path in (root / directory).rglob("*.yml"):
            found = id_line.search(path.read_text(encoding="utf-8"))
            if found:
                index[found.group(1).lower()] = path
    return index


def _cases(root: Path) -> list[Case]:
    cases = []
    for info in sorted((root / "regression_data").rglob("info.yml")):
        meta = yaml.safe_load(info.read_text(encoding="utf-8"))
        rule_id = str(meta["rule_metadata"][0]["id"]).lower()
        dumps = sorted(info.parent.glob("*.json"))
        events: list[dict[str, Any]] = []
        for dump in dumps:
            events.extend(flatten(obj) for obj in _json_objects(dump.read_text(encoding="utf-8")))
        cases.append(Case(info, rule_id, tuple(events)))
    return cases


@dataclass
class Suite:
    cases: list[Case]
    rules: dict[str, SigmaRule]
    compiled: dict[str, CompiledRule]
    failures: dict[str, str]  # rule id -> reason it does not match its own dump


@pytest.fixture(scope="module")
def suite() -> Suite:
    root = shared_file("sigmahq-sigma/regression_data").parent
    paths = _rule_paths(root)
    cases = _cases(root)
    rules: dict[str, SigmaRule] = {}
    compiled: dict[str, CompiledRule] = {}
    failures: dict[str, str] = {}
    for case in cases:
        path = paths.get(case.rule_id)
        if path is None:
            failures[case.rule_id] = f"{case.info}: rule file not found"
            continue
        rule = SigmaRule.from_yaml(path.read_text(encoding="utf-8"))
        rules[case.rule_id] = rule
        try:
            compiled[case.rule_id] = compile_rule(rule)
        except SigmaCompileError as exc:
            failures[case.rule_id] = f"{path.name}: does not compile: {exc.reason}"
    return Suite(cases, rules, compiled, failures)


def _hits(suite: Suite) -> set[tuple[str, int]]:
    """Every (rule id, dump index) where the compiled rule matches at least one event of the dump."""
    return {
        (rule_id, index)
        for rule_id, rule in suite.compiled.items()
        for index, case in enumerate(suite.cases)
        if any(rule.matches(event) for event in case.events)
    }


def test_rules_match_their_own_dump(suite: Suite) -> None:
    hits = _hits(suite)
    failures = dict(suite.failures)
    for index, case in enumerate(suite.cases):
        if case.rule_id in suite.compiled and (case.rule_id, index) not in hits:
            reason = "no events in dump" if not case.events else "no event of its dump matches"
            failures[case.rule_id] = f"{case.info.parent.name}: {reason}"
    total = len(suite.cases)
    passed = total - len(failures)
    print(f"\nSigmaHQ regression: {passed}/{total} rules match their own dump ({passed / total:.1%})")
    for rule_id, reason in sorted(failures.items()):
        print(f"  FAIL {rule_id}: {reason}")
    assert passed / total >= 0.95


def _sqlite_events(suite: Suite) -> sqlite3.Connection:
    """Every flattened event in one in-memory table ``logs``, one column per field, ``_dump`` = its case index.

    SQLite column names are case-insensitive, so fields differing only in case would collide; the Windows
    dumps have none (asserted), which keeps the table faithful to the events.
    """
    db = connect()
    columns: dict[str, str] = {}
    for case in suite.cases:
        for event in case.events:
            for name in event:
                assert columns.setdefault(name.lower(), name) == name, f"fields differ only in case: {name}"
    declared = ", ".join(quoted(name) for name in ["_dump", *columns.values()])
    db.execute(f"CREATE TABLE logs ({declared})")
    for index, case in enumerate(suite.cases):
        for event in case.events:
            names = ["_dump", *event]
            db.execute(
                f"INSERT INTO logs ({', '.join(quoted(n) for n in names)}) VALUES ({', '.join('?' * len(names))})",
                [index, *(sqlite_value(v) for v in event.values())],
            )
    return db


def _sqlite_hits(db: sqlite3.Connection, rule_id: str, rule: SigmaRule) -> set[tuple[str, int]]:
    """Run the backend's queries for one rule; a field no event has becomes an all-NULL column, as it is."""
    hits: set[tuple[str, int]] = set()
    for query in sqliteBackend().convert(SigmaCollection([rule])):
        sql = re.sub(r"^SELECT \* FROM logs WHERE", "SELECT DISTINCT _dump FROM logs WHERE", query)
        while True:
            try:
                rows = db.execute(sql).fetchall()
                break
            except sqlite3.OperationalError as exc:
                missing = re.match(r"no such column: (.+)$", str(exc))
                if not missing:
                    raise
                db.execute(f"ALTER TABLE logs ADD COLUMN {quoted(missing.group(1))}")
        hits.update((rule_id, row[0]) for row in rows)
    return hits


def test_other_hits_equal_sqlite_backend(suite: Suite) -> None:
    db = _sqlite_events(suite)
    ours = _hits(suite)
    theirs: set[tuple[str, int]] = set()
    unconvertible: dict[str, str] = {}
    for rule_id in suite.compiled:
        try:
            theirs |= _sqlite_hits(db, rule_id, suite.rules[rule_id])
        except Exception as exc:  # the backend's refusal is reported, not a failure of ours
            unconvertible[rule_id] = f"{type(exc).__name__}: {exc}"
    compared = {rule_id for rule_id in suite.compiled if rule_id not in unconvertible}
    ours = {hit for hit in ours if hit[0] in compared}
    own = {(case.rule_id, index) for index, case in enumerate(suite.cases)}
    other_ours, other_theirs = ours - own, theirs - own
    print(
        f"\nSQLite backend comparison over {len(compared)} rules x {len(suite.cases)} dumps: "
        f"{len(ours)} hits ours, {len(theirs)} theirs, {len(ours & theirs)} shared; "
        f"other (rule, dump) hits: {len(other_ours)} ours, {len(other_theirs)} theirs"
    )
    for rule_id, reason in sorted(unconvertible.items()):
        print(f"  NOT COMPARED {rule_id}: SQLite backend cannot convert it: {reason}")
    disagreements = sorted(other_ours ^ other_theirs)
    for rule_id, index in disagreements:
        side = "only ours" if (rule_id, index) in other_ours else "only SQLite"
        print(f"  DISAGREE {rule_id} on {suite.cases[index].info.parent.name}: {side}")
    assert other_ours == other_theirs
