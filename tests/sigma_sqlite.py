"""pySigma's SQLite backend as a reference for the rule compiler: flat events in an SQLite table, a rule's SQL
run over it. Shared by the regression harness (acceptance 1) and the differential test (acceptance 4).

Why aliased columns: SQLite column names are case-insensitive, and refsys documents carry fields that differ
only in case (auditd's raw ``syscall`` and enriched ``SYSCALL``), so each field gets a column ``c<n>`` and a
rule's field names are rewritten to those aliases before conversion. Columns are declared ``COLLATE NOCASE``,
as Zircolite (the backend's main user) builds its table, so literal equality is case-insensitive like Sigma.
"""

from __future__ import annotations

import copy
import json
import re
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

from sigma.backends.sqlite import sqliteBackend
from sigma.collection import SigmaCollection
from sigma.conditions import ConditionFieldEqualsValueExpression, ConditionValueExpression
from sigma.conversion.state import ConversionState
from sigma.processing.pipeline import ProcessingPipeline
from sigma.rule import SigmaRule
from sigma.types import SigmaFieldReference, SigmaString, SpecialChars

from security.sigma.routing import detection_items


def quoted(name: str) -> str:
    """A SQL identifier for any field name."""
    return '"' + name.replace('"', '""') + '"'


def sqlite_value(value: Any) -> Any:
    """How a flattened value is stored: booleans as the text Sigma compares them with (Zircolite's choice),
    lists and objects as their JSON text, scalars as they are."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    return value


def _regexp(pattern: str, value: Any) -> bool:
    """SQLite's REGEXP operator, which it leaves to the application: Python's ``re``, searching anywhere."""
    return value is not None and re.search(pattern, str(value)) is not None


def connect() -> sqlite3.Connection:
    """An in-memory database with the REGEXP function the backend's ``re`` queries need."""
    db = sqlite3.connect(":memory:")
    db.create_function("regexp", 2, _regexp, deterministic=True)
    return db


class KeywordBackend(sqliteBackend):
    """The SQLite backend, given the one reading of field-less keywords it lacks.

    The backend refuses keywords ("Value-only string expressions ... are not supported"), which would leave every
    keyword rule uncompared. This subclass reads a keyword as refsys documents it (a case-insensitive substring,
    wildcards honoured, of any of the event's text values) and builds it from the backend's own conversion of
    ``column|contains: keyword`` for each text column, so escaping, wildcards and the rest of the condition
    remain the backend's. ``columns`` are the table's columns.
    """

    def __init__(
        self, columns: Iterable[str], processing_pipeline: ProcessingPipeline | None = None, **options: Any
    ) -> None:
        super().__init__(processing_pipeline, **options)
        self.keyword_columns = list(columns)

    def convert_condition_val_str(self, cond: ConditionValueExpression, state: ConversionState) -> Any:
        value = cond.value
        assert isinstance(value, SigmaString)
        if not value.startswith(SpecialChars.WILDCARD_MULTI):
            value = SigmaString("*") + value
        if not value.endswith(SpecialChars.WILDCARD_MULTI):
            value = value + SigmaString("*")
        parts = []
        for column in self.keyword_columns:
            leaf = ConditionFieldEqualsValueExpression(column, value)
            leaf.parent = cond.parent
            parts.append(
                f"(typeof({column}) = 'text' AND {self.convert_condition_field_eq_val(leaf, state)})"
            )
        if not parts:
            return "0"
        return self.group_expression.format(expr=self._join_operands(parts, " OR "))


class Table:
    """One table of flat events, a column per field (aliased), and the rows' keys in a ``_key`` column."""

    def __init__(
        self, db: sqlite3.Connection, name: str, rows: Iterable[tuple[int, Mapping[str, Any]]]
    ) -> None:
        self.db = db
        self.name = name
        rows = list(rows)
        self.columns: dict[str, str] = {}
        for _key, event in rows:
            for field in event:
                self.columns.setdefault(field, f"c{len(self.columns)}")
        declared = ", ".join(f"{alias} COLLATE NOCASE" for alias in self.columns.values())
        db.execute(f"CREATE TABLE {quoted(name)} (_key INTEGER{', ' if declared else ''}{declared})")
        for key, event in rows:
            names = ["_key", *(self.columns[f] for f in event)]
            db.execute(
                f"INSERT INTO {quoted(name)} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [key, *(sqlite_value(v) for v in event.values())],
            )

    def _alias(self, field: str) -> str:
        """The column of a field; a field no row has gets an all-NULL column, which is what it is."""
        if field not in self.columns:
            alias = f"c{len(self.columns)}"
            self.db.execute(f"ALTER TABLE {quoted(self.name)} ADD COLUMN {alias} COLLATE NOCASE")
            self.columns[field] = alias
        return self.columns[field]

    def aliased(self, rule: SigmaRule) -> SigmaRule:
        """A copy of the rule reading this table's column aliases instead of field names."""
        copied = copy.deepcopy(rule)
        for item in detection_items(copied):
            if item.field is not None:
                item.field = self._alias(item.field)
            for value in item.value:
                if isinstance(value, SigmaFieldReference):
                    value.field = self._alias(value.field)
        return copied

    def queries(self, rule: SigmaRule, pipeline: ProcessingPipeline | None = None) -> list[str]:
        """The backend's SQL for the rule over this table (raises what the backend raises)."""
        backend = KeywordBackend(self.columns.values(), processing_pipeline=pipeline, table=self.name)
        return [str(q) for q in backend.convert(SigmaCollection([self.aliased(rule)]))]

    def hits(self, rule: SigmaRule, pipeline: ProcessingPipeline | None = None) -> set[int]:
        """Keys of the rows any of the rule's queries select."""
        keys: set[int] = set()
        for query in self.queries(rule, pipeline):
            sql = re.sub(r"^SELECT \* FROM", "SELECT DISTINCT _key FROM", query)
            keys.update(row[0] for row in self.db.execute(sql))
        return keys
