"""The bus's topic names, in one place, so that a producer and its consumers can never disagree on a spelling.

Names are the logical ones; the Kafka backend adds its configured prefix on the cluster.
"""

from __future__ import annotations

TELEMETRY = "telemetry"
"""Normalised ECS events from every telemetry source; read by the store indexer and rule matching."""
MATCHES = "matches"
"""Sigma rule matches, keyed by (correlation, group) so that one correlation window stays on one partition."""
ALERTS = "alerts"
"""Alerts from the correlation stage; read by the incident manager and the notifier."""
AUDIT = "audit"
"""Audit-trail records of the control plane's own state changes."""
PRODUCT_AVAILABLE = "product.available"
"""A product registered in the catalog; may trigger downstream chains."""
TRACES = "traces"
"""Production trace events (the KPI contract); feed the lineage tables."""
PARKING_LOT = "parking-lot"
"""Steps and records that failed for good and wait for an operator."""

ALL_TOPICS: tuple[str, ...] = (TELEMETRY, MATCHES, ALERTS, AUDIT, PRODUCT_AVAILABLE, TRACES, PARKING_LOT)
"""Every topic refsys uses, in a fixed order (e.g. to create them on a Kafka cluster)."""
