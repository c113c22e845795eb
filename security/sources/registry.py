"""Source adapters by name: the ``{source}`` of ``POST /api/v1/ingest/{source}`` and ``refsys ingest --source``."""

from __future__ import annotations

from security.sources.auditd import AuditdAdapter
from security.sources.base import Adapter
from security.sources.ecs_source import EcsAdapter
from security.sources.falco import FalcoAdapter
from security.sources.k8s_audit import KubernetesAuditAdapter
from security.sources.keycloak import KeycloakAdapter
from security.sources.suricata import SuricataAdapter
from security.sources.syslog import SyslogAdapter
from security.sources.wazuh import WazuhAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    "suricata": SuricataAdapter,
    "falco": FalcoAdapter,
    "k8s_audit": KubernetesAuditAdapter,
    "auditd": AuditdAdapter,
    "syslog": SyslogAdapter,
    "wazuh": WazuhAdapter,
    "keycloak": KeycloakAdapter,
    "ecs": EcsAdapter,
}


def adapter_for(name: str) -> Adapter:
    """A new adapter for source ``name``; an unknown name is a ``KeyError`` that lists the known ones."""
    try:
        adapter_class = ADAPTERS[name]
    except KeyError:
        raise KeyError(
            f"unknown telemetry source {name!r}; known sources: {', '.join(sorted(ADAPTERS))}"
        ) from None
    return adapter_class()
