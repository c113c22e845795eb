"""The OpenSearch index template for refsys events (ECS mappings) and the ISM retention policy.

Mapping explosion guard, in three layers:

- each source's native namespace (``suricata``, ``falco``, ...) is one ``flat_object`` field (OpenSearch >= 2.7):
  a sensor may send any number of keys without adding a single field to the mapping, and exact-value filters
  (``term``/``terms`` on ``suricata.eve.alert.signature_id``) still work. ``flat_object`` must be a root field,
  hence the whole namespace; OpenSearch does not aggregate on its subfields, so dashboards aggregate on ECS
  fields (which normalisers fill from the native ones);
- any other unknown top-level object is kept in ``_source`` but not indexed (``dynamic: false`` through a dynamic
  template). Mapping it to ``flat_object`` dynamically would be nicer but fails in OpenSearch
  (opensearch-project/OpenSearch#12298);
- inside ECS field sets, new strings map to ``keyword`` and ``index.mapping.total_fields.limit`` bounds the rest.

``@timestamp`` is ``date_nanos`` so that microseconds survive: range bounds and sort order then agree with the
SQLite store, which keeps microseconds.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

NATIVE_NAMESPACES = ("suricata", "falco", "wazuh", "kubernetes", "auditd", "keycloak", "labels")
"""Root fields mapped as ``flat_object`` (``labels`` too: ECS allows any key in it)."""

_KEYWORD = {"type": "keyword", "ignore_above": 1024}
_LONG = {"type": "long"}
_IP = {"type": "ip"}
_DATE = {"type": "date_nanos"}
_TEXT = {"type": "text", "analyzer": "refsys_text"}


def _props(**fields: dict[str, Any]) -> dict[str, Any]:
    return {"properties": fields}


def _keywords(*names: str, **others: dict[str, Any]) -> dict[str, Any]:
    return _props(**{name: _KEYWORD for name in names}, **others)


_ENDPOINT = _keywords("address", "domain", "mac", ip=_IP, port=_LONG, bytes=_LONG, packets=_LONG)
_OTHER_FIELD_SETS = [
    *(
        "agent",
        "client",
        "cloud",
        "container",
        "data_stream",
        "device",
        "dll",
        "dns",
        "ecs",
        "email",
        "error",
    ),
    *("faas", "group", "http", "log", "organization", "package", "registry", "server", "service", "span"),
    *("threat", "tls", "trace", "transaction", "url", "user_agent", "vulnerability"),
]
"""ECS field sets mapped dynamically (strings as keywords); listed so they are not taken for unknown namespaces."""

ECS_PROPERTIES: dict[str, Any] = {
    "@timestamp": _DATE,
    "message": _TEXT,
    "tags": _KEYWORD,
    "event": _keywords(
        *("id", "kind", "category", "type", "action", "outcome", "module", "dataset", "provider", "code"),
        *("reason", "hash", "timezone"),
        **{"severity": _LONG, "duration": _LONG, "risk_score": {"type": "float"}, "original": _TEXT},
        **{"ingested": _DATE, "created": _DATE, "start": _DATE, "end": _DATE},
    ),
    "source": _ENDPOINT,
    "destination": _ENDPOINT,
    "client": _ENDPOINT,
    "server": _ENDPOINT,
    "host": _keywords("name", "hostname", "id", "mac", "type", "architecture", ip=_IP),
    "user": _keywords("name", "id", "domain", "email", "full_name", "roles"),
    "process": _keywords(
        *("name", "executable", "command_line", "args", "working_directory", "entity_id"),
        **{"pid": _LONG, "parent": _keywords("name", "executable", "command_line", pid=_LONG)},
    ),
    "file": _keywords("path", "name", "directory", "extension", "type", size=_LONG),
    "network": _keywords(
        *("transport", "protocol", "type", "direction", "community_id", "application"),
        **{"bytes": _LONG, "packets": _LONG},
    ),
    "rule": _keywords("id", "name", "category", "ruleset", "description", "reference", "version", "uuid"),
    "orchestrator": _keywords("type", "namespace", "cluster", "resource"),
    "observer": _keywords("name", "type", "vendor", "product", "hostname", "version", ip=_IP),
    "related": _keywords("user", "hosts", "hash", ip=_IP),
    **{namespace: {"type": "flat_object"} for namespace in NATIVE_NAMESPACES},
    **{field_set: {"type": "object"} for field_set in _OTHER_FIELD_SETS},
}
IP_FIELDS = frozenset(
    f"{parent}.ip" for parent in ("source", "destination", "client", "server", "host", "observer", "related")
)
LONG_FIELDS = frozenset(
    ["event.severity", "event.duration", "process.pid", "process.parent.pid", "file.size", "network.bytes"]
    + ["network.packets"]
    + [f"{end}.{leaf}" for end in ("source", "destination", "client", "server") for leaf in ("port", "bytes")]
)
TEXT_FIELDS = frozenset(["event.original", "message"])


def is_native(field: str) -> bool:
    """A field inside a ``flat_object`` namespace: its values are indexed as strings."""
    return field.split(".", 1)[0] in NATIVE_NAMESPACES


def index_template(prefix: str, *, total_fields: int = 2000) -> dict[str, Any]:
    """The composable index template for ``<prefix>-*``; index-level ``ignore_malformed`` keeps a document
    whose ``source.ip`` is ``"-"`` (it only loses that field's index entry)."""
    return {
        "index_patterns": [f"{prefix}-*"],
        "priority": 100,
        "template": {
            "settings": {
                "number_of_shards": 1,
                "index.mapping.total_fields.limit": total_fields,
                "index.mapping.ignore_malformed": True,
                "analysis": {
                    "analyzer": {
                        "refsys_text": {
                            "type": "custom",
                            "tokenizer": "standard",
                            "filter": ["lowercase", "asciifolding"],
                        }
                    }
                },
            },
            "mappings": {
                "dynamic": True,
                "date_detection": False,
                "numeric_detection": False,
                "dynamic_templates": [
                    {
                        "unknown_namespaces": {
                            "match_mapping_type": "object",
                            "path_unmatch": "*.*",
                            "mapping": {"type": "object", "dynamic": False},
                        }
                    },
                    {"strings_as_keywords": {"match_mapping_type": "string", "mapping": _KEYWORD}},
                ],
                "properties": copy.deepcopy(ECS_PROPERTIES),
            },
        },
    }


def ism_policy(prefix: str, retention_days: int | None = None) -> dict[str, Any]:
    """The shipped ISM policy (``opensearch/ism_policy.json``) for ``<prefix>-*``, retention optionally changed."""
    text = resources.files("security.store").joinpath("opensearch/ism_policy.json").read_text()
    policy: dict[str, Any] = json.loads(text)
    body = policy["policy"]
    for template in body.get("ism_template", []):
        template["index_patterns"] = [f"{prefix}-*"]
    if retention_days is not None:
        for state in body["states"]:
            for transition in state.get("transitions", []):
                if transition["state_name"] == "delete":
                    transition["conditions"] = {"min_index_age": f"{int(retention_days)}d"}
    return policy
