"""Helpers for ECS documents: nested JSON objects addressed by dotted paths (``source.ip``).

Documents stay nested (as ECS and OpenSearch expect them); rules, filters and store columns address fields by
their dotted path. Empty values are never written, so a missing field is absent rather than null.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from typing import Any


def is_empty(value: Any) -> bool:
    """None, an empty string, list or object: what ``put`` leaves out (0 and False are values)."""
    return value is None or (isinstance(value, str | list | dict) and not value)


def put(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set ``path`` in ``doc``, creating the objects on the way; ``None`` and empty values are skipped."""
    if is_empty(value):
        return
    node = doc
    *parents, leaf = path.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def get(doc: Mapping[str, Any], path: str, default: Any = None) -> Any:
    """The value at ``path``, or ``default``. A literal dotted key (``{"a.b": 1}``) is found too."""
    if path in doc:
        return doc[path]
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def put_child(doc: dict[str, Any], parent: str, leaf: str, value: Any) -> None:
    """``put(doc, f"{parent}.{leaf}", value)`` without splitting a path, for a hot path's two-level fields."""
    if value is None or (isinstance(value, (str, list, dict)) and not value):  # is_empty, minus a call
        return
    node = doc.get(parent)
    if not isinstance(node, dict):
        node = doc[parent] = {}
    node[leaf] = value


def get_child(doc: Mapping[str, Any], parent: str, leaf: str) -> Any:
    """``get(doc, f"{parent}.{leaf}")`` without splitting a path, for a hot path's two-level fields."""
    dotted = f"{parent}.{leaf}"
    if dotted in doc:
        return doc[dotted]
    node = doc.get(parent)
    if type(node) is dict or isinstance(node, Mapping):
        return node.get(leaf)
    return None


def flatten(doc: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf as ``(dotted path, value)``; lists are leaves."""
    for key, value in doc.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, path + ".")
        else:
            yield path, value


def ip(value: Any) -> str | None:
    """``value`` as a canonical IP address, or None when it is not one (a host name, a redacted
    ``000.111.222.10``, ``local``): ``*.ip`` fields only ever hold addresses, so an ``ip``-typed mapping holds."""
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None
