"""What the catalog tells others: ``product.available`` records, the scanner's ECS alert, audit details.

The alert is an ECS document like every other telemetry event (``event.dataset`` ``refsys.scanner``, reserved to
refsys), so it is stored, searchable and matched by SIEM rules with the rest. Its ``event.id`` derives from the
product and its hash, so announcing the same quarantine twice stores it once.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from control_plane.core import clock
from pipelines.catalog.scanner import Verdict

SCANNER_DATASET = "refsys.scanner"
MALWARE_SEVERITY = 8
_EVENT_NAMESPACE = uuid.UUID("0c6b8e0a-5d0b-4f7e-9a47-3f1f6b2f5c11")


def _time(moment: datetime | None) -> str | None:
    return clock.rfc3339(moment) if moment is not None else None


def product_available(row: Mapping[str, Any]) -> dict[str, Any]:
    """The ``product.available`` record (times RFC 3339); downstream triggers read it."""
    return {
        "product_id": row["id"],
        "name": row["name"],
        "product_type": row["product_type"],
        "mission": row["mission"],
        "t0": _time(row["t0"]),
        "sensing_start": _time(row["sensing_start"]),
        "sensing_stop": _time(row["sensing_stop"]),
        "baseline": row["baseline"],
        "reprocessing": bool(row["reprocessing"]),
        "run_id": row["run_id"],
        "published_at": _time(row["published_at"]),
    }


def _compact(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """``mapping`` without None values, recursively (ECS documents leave absent fields out)."""
    compact = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            value = _compact(value)
        if value is not None and value != {}:
            compact[key] = value
    return compact


def malware_alert(row: Mapping[str, Any], signature: str, scanner_version: str | None) -> dict[str, Any]:
    """The security event of an infected product: file name, size and hash, the signature, the run."""
    run_id, product_type = row["run_id"], row["product_type"]
    message = f"malware {signature} found in product {row['name']} ({product_type}"
    message += f", run {run_id}); quarantined" if run_id else ", external); quarantined"
    return _compact(
        {
            "@timestamp": clock.rfc3339(clock.utcnow()),
            "message": message,
            "event": {
                "id": str(uuid.uuid5(_EVENT_NAMESPACE, f"malware|{row['id']}|{row['sha256']}")),
                "kind": "alert",
                "category": ["malware"],
                "type": ["info"],
                "action": "malware-detected",
                "module": "refsys",
                "dataset": SCANNER_DATASET,
                "severity": MALWARE_SEVERITY,
            },
            "file": {"name": row["name"], "size": row["size"], "hash": {"sha256": row["sha256"]}},
            "rule": {"name": signature},
            "observer": {"product": "ClamAV", "vendor": "Cisco", "version": scanner_version},
            "labels": {"run_id": run_id, "product_id": row["id"], "product_type": product_type},
            "refsys": {
                "product": {
                    "id": row["id"],
                    "type": product_type,
                    "mission": row["mission"],
                    "state": row["state"],
                },
                "run": {"id": run_id, "step": row["step"]},
                "chain": {"id": row["chain_id"], "version": row["chain_version"]},
                "scanner": {"signature": signature},
            },
        }
    )


def audit_details(row: Mapping[str, Any], verdict: Verdict | None) -> dict[str, Any]:
    """What an audit record of a registration carries for the SIEM: the product, its lineage, the verdict."""
    return _compact(
        {
            "product_id": row["id"],
            "product_type": row["product_type"],
            "mission": row["mission"],
            "name": row["name"],
            "state": row["state"],
            "size": row["size"],
            "sha256": row["sha256"],
            "run_id": row["run_id"],
            "step": row["step"],
            "chain_id": row["chain_id"],
            "chain_version": row["chain_version"],
            "signature": verdict.signature if verdict is not None else None,
            "reason": row["reason"],
        }
    )
