"""Configuration: one validated ``Settings`` tree from a YAML file and ``REFSYS_*`` environment variables.

Precedence, highest first: environment (``REFSYS_DATABASE__URL``), the YAML file (``--config`` or
``REFSYS_CONFIG``), then the embedded defaults, which keep all state under ``./var/`` so that ``refsys serve``
works with no set-up. Every section forbids unknown keys, and unknown ``REFSYS_*`` variables are refused too:
a typo must stop start-up with one line naming it, never be silently ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "REFSYS_"
CONFIG_ENV = "REFSYS_CONFIG"
# Variables that share the prefix but are not settings: the CLI's and the test suite's own.
NON_SETTING_ENV = frozenset({"REFSYS_CONFIG", "REFSYS_TOKEN", "REFSYS_URL", "REFSYS_REQUIRE_SERVICES"})
NON_SETTING_ENV_PREFIXES = ("REFSYS_TEST_", "REFSYS_UPDATE_", "REFSYS_BENCH_")


class ConfigError(Exception):
    """Configuration that refsys refuses to start with; ``str()`` is the one line shown to the operator."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    """Address `refsys serve` listens on."""
    port: int = Field(8080, ge=1, le=65535)
    """TCP port `refsys serve` listens on."""
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    """Largest request body accepted; larger bodies get 413."""
    hsts: bool = False
    """Send Strict-Transport-Security (enable when refsys is served over HTTPS)."""


class DatabaseSettings(_Section):
    url: str | None = None
    """SQLAlchemy URL of the state database. Default: sqlite:///DATA_DIR/refsys.db. PostgreSQL: postgresql://..."""
    pool_size: int = Field(10, ge=1, le=200)
    """Connections kept open per process (PostgreSQL)."""
    connect_timeout_s: float = Field(5.0, gt=0)
    """How long a connection attempt may take before start-up fails."""


class OidcSettings(_Section):
    issuer: str | None = None
    """External issuer URL (for Keycloak: https://HOST/realms/REALM). Turns the built-in issuer off."""
    jwks_url: str | None = None
    """JWKS URL; discovered from ISSUER/.well-known/openid-configuration when unset."""
    jwks_min_refresh_s: float = Field(10.0, ge=0)
    """Least time between two JWKS fetches triggered by an unknown `kid`."""


class BuiltinIssuerSettings(_Section):
    enabled: bool | None = None
    """Built-in issuer on/off. Default: on, unless an external issuer is configured."""
    issuer: str = "urn:refsys:builtin-issuer"
    """`iss` of the tokens it mints (independent of host and port, so CLI and server agree)."""
    key_file: Path | None = None
    """Signing key set of the built-in issuer (mode 0600). Default: DATA_DIR/secrets/issuer-keys.json."""
    max_ttl_s: int = Field(24 * 3600, ge=60)
    """Longest lifetime of a token the built-in issuer mints; also how long a rotated key stays published."""


class AuthSettings(_Section):
    client_id: str = "refsys"
    """refsys's OIDC client; roles are read from resource_access.CLIENT_ID.roles."""
    audience: str | None = None
    """Required `aud`. Default: the client id."""
    realm_roles: bool = False
    """Also accept realm roles (realm_access.roles)."""
    leeway_s: int = Field(30, ge=0, le=300)
    """Clock skew allowed on exp and nbf."""
    oidc: OidcSettings = OidcSettings()
    builtin_issuer: BuiltinIssuerSettings = BuiltinIssuerSettings()


class AuditSettings(_Section):
    mac_key_file: Path | None = None
    """HMAC key of the audit chain, kept outside the database. Default: DATA_DIR/secrets/audit-mac.key."""
    signing_key_file: Path | None = None
    """Ed25519 key signing audit checkpoints. Default: DATA_DIR/secrets/audit-checkpoint.pem."""
    checkpoint_file: Path | None = None
    """Where signed checkpoints of the chain head go. Default: DATA_DIR/audit/checkpoints.jsonl."""
    checkpoint_interval_s: float = Field(60.0, gt=0)
    """How often the server writes a checkpoint (and always at shutdown)."""
    refusals_per_minute: int = Field(10, ge=1)
    """Refused requests from one client address audited one by one per minute; beyond that, aggregated."""


class KafkaSettings(_Section):
    bootstrap_servers: list[str] = ["127.0.0.1:9092"]
    """Kafka brokers (host:port)."""
    client_id: str = "refsys"
    """Client id reported to the brokers."""
    topic_prefix: str = "refsys."
    """Prefix of refsys's topic names on the cluster."""


class BusSettings(_Section):
    backend: Literal["embedded", "kafka"] = "embedded"
    """Event bus: embedded (SQL) or kafka."""
    path: Path | None = None
    """SQLite file of the embedded bus. Default: DATA_DIR/bus.db, or the PostgreSQL state database if any."""
    partitions: int = Field(4, ge=1, le=256)
    """Partitions per topic."""
    member_timeout_s: float = Field(10.0, gt=0)
    """A consumer silent this long loses its partitions to the rest of its group."""
    kafka: KafkaSettings = KafkaSettings()


class WazuhApiConfig(_Section):
    url: str | None = None
    """Wazuh manager API (https://HOST:55000) to enrich Wazuh alerts with agent inventory; unset: no enrichment."""
    username: str | None = None
    """Wazuh API user (read-only agent access is enough)."""
    password: str | None = None
    """Its password (prefer REFSYS_TELEMETRY__WAZUH_API__PASSWORD)."""
    ca_file: Path | None = None
    """CA bundle of the manager's certificate (Wazuh's root-ca.pem)."""
    insecure_skip_tls_verify: bool = False
    """Turn certificate verification off (never implied; logged on every client)."""
    inventory_ttl_s: float = Field(300.0, gt=0)
    """How long the agent inventory is reused before it is fetched again."""


class TelemetrySettings(_Section):
    max_future_skew_s: int = Field(300, ge=0)
    """Event times later than ingest time plus this are clamped (a forged future time cannot blind detection)."""
    max_past_skew_s: int | None = Field(None, ge=0)
    """Event times earlier than ingest time minus this are clamped; unset keeps old events' times (backfill)."""
    max_backlog_events: int = Field(500_000, ge=1000)
    """Events waiting for the store before the intake answers 429 with Retry-After."""
    max_decompressed_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Largest request body once gzip is undone."""
    heartbeats: dict[str, int] = {}
    """Expected heartbeat in seconds per source name; silence beyond it emits a source-silent event."""
    wazuh_api: WazuhApiConfig = WazuhApiConfig()


class OpenSearchSettings(_Section):
    hosts: list[str] = ["https://127.0.0.1:9200"]
    """OpenSearch nodes (URLs)."""
    username: str | None = None
    """Basic-auth user."""
    password: str | None = None
    """Basic-auth password (prefer REFSYS_STORE__OPENSEARCH__PASSWORD or a mounted file)."""
    ca_file: Path | None = None
    """CA bundle to verify the cluster's certificate."""
    verify_certs: bool = True
    """Verify TLS certificates (turn off only for a throw-away test cluster)."""
    index_prefix: str = "refsys-events"
    """Prefix of the daily indices and the index template."""


class StoreSettings(_Section):
    backend: Literal["sqlite", "opensearch"] = "sqlite"
    """Event store: embedded SQLite (FTS5) or OpenSearch."""
    path: Path | None = None
    """SQLite file of the embedded event store. Default: DATA_DIR/events.db."""
    opensearch: OpenSearchSettings = OpenSearchSettings()


class LaneSettings(_Section):
    priority: int = Field(ge=0, le=1000)
    """Higher runs first when lanes compete for the shared step slots."""
    concurrency: int = Field(ge=1, le=10_000)
    """Steps of this lane running at once, at most."""
    reserved: int = Field(0, ge=0)
    """Slots of `production.max_parallel_steps` only this lane may use, so a busy lane never starves it."""
    priority_class: str | None = None
    """Kubernetes PriorityClass of this lane's Jobs."""
    throttled: bool = False
    """Use only slots no other lane could use right now (reprocessing): never delays the other lanes."""

    @model_validator(mode="after")
    def _reserved_within_concurrency(self) -> LaneSettings:
        if self.reserved > self.concurrency:
            raise ValueError("reserved slots exceed the lane's concurrency")
        return self


DEFAULT_LANES: dict[str, LaneSettings] = {
    "PT": LaneSettings(priority=100, concurrency=8, reserved=2, priority_class="refsys-pt"),
    "NRT": LaneSettings(priority=80, concurrency=8, reserved=2, priority_class="refsys-nrt"),
    "FAST24": LaneSettings(priority=60, concurrency=6, reserved=1, priority_class="refsys-fast24"),
    "NTC": LaneSettings(priority=40, concurrency=6, reserved=0, priority_class="refsys-ntc"),
    "REPROCESSING": LaneSettings(
        priority=0, concurrency=2, reserved=0, priority_class="refsys-reprocessing", throttled=True
    ),
}


class ProcessorSettings(_Section):
    name: str = Field(min_length=1, max_length=64)
    """Processor name, as chain steps reference it."""
    version: str = Field(min_length=1, max_length=32)
    """Processor version, as chain steps reference it."""
    image: str | None = None
    """Container image the Kubernetes executor runs (pin it by digest in production)."""
    command: list[str] = []
    """Command the local executor runs (and the container's entrypoint on Kubernetes); the step's templated
    arguments are appended."""


DEFAULT_PROCESSORS: list[ProcessorSettings] = [
    ProcessorSettings(
        name=name,
        version="1.0",
        image=f"ghcr.io/refsys/processor-{name}:1.0",
        command=["{python}", "-m", f"pipelines.processors.{name.replace('-', '_')}"],
    )
    for name in ("s1-l0", "s1-l1", "s1-l2", "s2-l1c", "s2-l2a", "s3-nrt", "noop")
]
"""The reference processors of the bundled chains; ``{python}`` is the interpreter refsys runs on."""


class LocalExecutorSettings(_Section):
    work_dir: Path | None = None
    """Where each step execution gets its own directory. Default: DATA_DIR/work."""
    cpu_seconds: int | None = Field(None, ge=1)
    """RLIMIT_CPU of a step's process, in CPU seconds (None: only the step timeout applies)."""
    memory_mib_factor: float = Field(2.0, gt=0)
    """RLIMIT_AS of a step's process, as a multiple of its memory request (address space exceeds RSS)."""
    max_open_files: int = Field(1024, ge=16)
    """RLIMIT_NOFILE of a step's process."""
    keep_work_days: float = Field(7.0, gt=0)
    """Days an ended run's execution directories (logs, scratch) are kept before upkeep removes them (locally
    and on the Kubernetes work volume)."""


_CLAIM_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
"""A PersistentVolumeClaim name (DNS-1123 subdomain)."""


class KubernetesExecutorSettings(_Section):
    namespace: str = "refsys-production"
    """Namespace the step Jobs are created in."""
    kubeconfig: Path | None = None
    """Kubeconfig file; unset: in-cluster service-account configuration."""
    ttl_after_finished_s: int = Field(600, ge=0)
    """ttlSecondsAfterFinished set on a Job once its outcome is saved."""
    resync_s: float = Field(300.0, gt=0)
    """Full relist of Jobs this often, whatever the watch said."""
    image_pull_secret: str | None = None
    """Image pull secret of step Pods."""
    work_claim: str | None = Field(None, pattern=_CLAIM_NAME, max_length=253)
    """PersistentVolumeClaim (shared, ReadWriteMany) a step Pod writes its outputs to: its `RUN/STEP/ATTEMPT/out`
    is the Pod's /work/out. Set with work_mount, or steps with outputs cannot publish."""
    work_mount: Path | None = None
    """Where the control plane sees work_claim's volume: it publishes a step's outputs from
    `work_mount/RUN/STEP/ATTEMPT/out`."""
    products_claim: str | None = Field(None, pattern=_CLAIM_NAME, max_length=253)
    """PersistentVolumeClaim of the catalog storage (its root is production.catalog.storage_dir): each input
    product of a step is mounted from it read-only at /work/in/NAME. Unset: steps with inputs cannot start."""

    @model_validator(mode="after")
    def _work_claim_and_mount_together(self) -> KubernetesExecutorSettings:
        if (self.work_claim is None) != (self.work_mount is None):
            raise ValueError("work_claim and work_mount: set both (the same volume, seen by Pods and refsys)")
        return self


class CatalogSettings(_Section):
    storage_dir: Path | None = None
    """Where published products are kept (local filesystem storage). Default: DATA_DIR/products."""
    download_quota_bytes_per_day: int | None = Field(None, ge=0)
    """Volume one user may download per UTC day (None: unlimited). Over it: 429 and an audit record."""
    retention_days: dict[str, int] = {}
    """Days a product of a type is kept after publication (type -> days); types not named are kept."""


class ScannerSettings(_Section):
    clamd_socket: Path | None = None
    """clamd's Unix socket; when set, every output product is scanned before it is published."""
    timeout_s: float = Field(60.0, gt=0)
    """How long one scan may take before the product is held as unscanned."""


class ProductionSettings(_Section):
    executor: Literal["local", "kubernetes"] = "local"
    """Where steps run: local subprocesses (embedded default) or Kubernetes Jobs."""
    chain_dirs: list[Path] = []
    """Directories of chain YAML files loaded besides the bundled ones (a read-only base)."""
    bundled_chains: bool = True
    """Load the chains shipped in pipelines/chains."""
    max_parallel_steps: int = Field(16, ge=1)
    """Steps running at once across every lane."""
    lanes: dict[str, LaneSettings] = DEFAULT_LANES
    """Lanes by name (PT, NRT, FAST24, NTC, REPROCESSING by default)."""
    processors: list[ProcessorSettings] = DEFAULT_PROCESSORS
    """The processor table: what each (name, version) a chain step names runs."""
    lease_s: float = Field(15.0, gt=0)
    """A running step's lease; a restarted control plane adopts or requeues steps whose lease ran out."""
    tick_s: float = Field(0.2, gt=0)
    """Longest the engine sleeps between two scheduling rounds when nothing wakes it."""
    cron: bool = True
    """Run chains' cron triggers in `refsys serve`."""
    local: LocalExecutorSettings = LocalExecutorSettings()
    kubernetes: KubernetesExecutorSettings = KubernetesExecutorSettings()
    catalog: CatalogSettings = CatalogSettings()
    scanner: ScannerSettings = ScannerSettings()

    @model_validator(mode="after")
    def _reservations_fit(self) -> ProductionSettings:
        reserved = sum(lane.reserved for lane in self.lanes.values())
        if reserved > self.max_parallel_steps:
            raise ValueError(f"lanes reserve {reserved} slots, more than max_parallel_steps")
        seen: set[tuple[str, str]] = set()
        for processor in self.processors:
            key = (processor.name, processor.version)
            if key in seen:
                raise ValueError(f"processor {processor.name} {processor.version} is listed twice")
            seen.add(key)
        return self


class DetectionSettings(_Section):
    bundled_rules: bool = True
    """Load the Sigma rules shipped in security/rules."""
    rule_dirs: list[Path] = []
    """Directories of Sigma rule files (rules, correlations, filters) loaded besides the bundled ones (a read-only
    base; uploads through the API are an overlay)."""
    placeholders: dict[str, list[str]] = {"admins": ["root"]}
    """Values of Sigma `expand` placeholders (`%admins%` -> list), by placeholder name. The bundled sudo rule
    alerts on every account not in `admins`: list your administrators there."""
    lateness_s: float = Field(60.0, ge=0)
    """How late (event time, behind the latest seen) a match may arrive and still count in correlation windows."""
    max_groups: int = Field(100_000, ge=1)
    """Groups one correlation keeps at most; the least recently updated is evicted (and counted) beyond it."""
    matching_workers: int = Field(1, ge=1, le=64)
    """Matching workers `refsys serve` runs on the telemetry topic (stateless; partitions are shared out)."""
    checkpoint_every_s: float = Field(2.0, gt=0)
    """How often the correlation stage commits its state together with its bus offsets."""


class AlertSettings(_Section):
    suppression_window_s: float = Field(300.0, ge=0)
    """Alerts of one rule with the same group key within this many seconds (event time) of the first count as
    duplicates of it, unless the rule sets its own `suppression.window`."""
    incident_window_s: float = Field(3600.0, ge=0)
    """An alert joins an open incident sharing a host, user or source address active within this many seconds."""


class DemoSettings(_Section):
    events_per_s: float = Field(20.0, gt=0, le=100_000)
    """Rate of the demo telemetry generator (`refsys serve --demo`)."""
    attack_every_s: float = Field(120.0, gt=0)
    """How often an attack scenario is mixed into the demo traffic."""
    seed: int | None = None
    """Random seed of the demo generator, for reproducible demo data."""


SigmaLevel = Literal["informational", "low", "medium", "high", "critical"]
RESERVED_HOOK_NAMES = frozenset({"alertmanager", "topic"})
"""Names the Alertmanager and topic hooks go by (metrics, dead letters): a webhook cannot take them."""


class WebhookSettings(_Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    """Name of the webhook in metrics, logs and dead letters."""
    url: str = Field(pattern=r"^https?://")
    """Where the signed JSON notification is POSTed."""
    secret_file: Path
    """File holding the HMAC-SHA256 key of `X-Refsys-Signature` (trailing newline ignored; never logged)."""
    min_level: SigmaLevel = "medium"
    """Lowest Sigma level sent to this webhook."""
    tags: list[str] = []
    """Send only alerts whose rule has at least one of these tags (any-of, case-insensitive); empty: all."""
    timeout_s: float = Field(5.0, gt=0, le=300)
    """How long one delivery attempt may take."""
    max_attempts: int = Field(5, ge=1, le=50)
    """Attempts before the notification is dead-lettered."""


class AlertmanagerHookSettings(_Section):
    url: str | None = Field(None, pattern=r"^https?://")
    """Alertmanager base URL (alerts go to URL/api/v2/alerts); unset: no Alertmanager hook."""
    min_level: SigmaLevel = "medium"
    """Lowest Sigma level sent to Alertmanager."""
    tags: list[str] = []
    """Send only alerts whose rule has one of these tags (any-of); empty: all."""
    labels: dict[str, str] = {}
    """Extra labels on every alert sent (e.g. cluster, environment)."""
    timeout_s: float = Field(5.0, gt=0, le=300)
    """How long one delivery attempt may take."""
    max_attempts: int = Field(5, ge=1, le=50)
    """Attempts before the notification is dead-lettered."""


class HookSettings(_Section):
    webhooks: list[WebhookSettings] = []
    """Signed JSON webhooks, each routed by `min_level` and `tags` (see "Alert hooks")."""
    alertmanager: AlertmanagerHookSettings = AlertmanagerHookSettings()
    topic: str | None = None
    """Bus topic (on Kafka: the topic, with the prefix) that routed notifications are re-published to."""
    topic_min_level: SigmaLevel = "informational"
    """Lowest Sigma level re-published to `hooks.topic`."""
    public_url: str | None = Field(None, pattern=r"^https?://")
    """Base URL of refsys as receivers reach it (links in notifications). Default: http://SERVER_HOST:PORT."""
    backoff_initial_s: float = Field(1.0, gt=0)
    """First retry delay; it doubles per attempt (with jitter) up to `backoff_max_s`."""
    backoff_max_s: float = Field(30.0, gt=0)
    """Longest wait between two attempts, also for a receiver's longer Retry-After."""
    workers: int = Field(8, ge=1, le=128)
    """Deliveries in flight at once, so one slow receiver does not hold the others."""

    @model_validator(mode="after")
    def _hook_names_unique(self) -> HookSettings:
        names = [hook.name for hook in self.webhooks]
        taken = {name for name in names if names.count(name) > 1} | (set(names) & RESERVED_HOOK_NAMES)
        if taken:
            raise ValueError(f"webhook names must be unique and not reserved: {sorted(taken)}")
        return self

    @field_validator("topic")
    @classmethod
    def _publishable_topic(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # Imported here: the bus package imports this module, so a top-level import would be circular.
        from control_plane.core.bus import topics
        from control_plane.core.bus.base import check_topic

        if value in topics.ALL_TOPICS:
            raise ValueError(f"{value!r} is one of refsys's own topics; name a topic of its own")
        return check_topic(value)


class MetricsSettings(_Section):
    port: int | None = Field(None, ge=1, le=65535)
    """Optional separate, unauthenticated metrics port for in-cluster scraping."""
    host: str = "127.0.0.1"
    """Address of the separate metrics port."""


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level of the structured JSON logs."""
    access_log: bool = True
    """One JSON line per request."""


class Settings(BaseSettings):
    """Everything refsys can be configured with. Unset paths derive from ``data_dir``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    data_dir: Path = Path("var")
    """Directory of the embedded state (database, bus, keys, checkpoints)."""
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    auth: AuthSettings = AuthSettings()
    audit: AuditSettings = AuditSettings()
    bus: BusSettings = BusSettings()
    store: StoreSettings = StoreSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    production: ProductionSettings = ProductionSettings()
    detection: DetectionSettings = DetectionSettings()
    alerts: AlertSettings = AlertSettings()
    demo: DemoSettings = DemoSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    hooks: HookSettings = HookSettings()

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @model_validator(mode="after")
    def _database_url_scheme(self) -> Settings:
        url = self.database.url
        if url is not None and not url.startswith(
            ("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")
        ):
            raise ValueError("database.url: only sqlite:/// and postgresql:// URLs are supported")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs (see load_settings); environment wins over it.
        return env_settings, init_settings

    # Derived values: one place that knows where each piece of embedded state lives.

    @property
    def database_url(self) -> str:
        if self.database.url:
            return normalise_database_url(self.database.url)
        return f"sqlite:///{self.data_dir / 'refsys.db'}"

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @property
    def audience(self) -> str:
        return self.auth.audience or self.auth.client_id

    @property
    def builtin_issuer_enabled(self) -> bool:
        enabled = self.auth.builtin_issuer.enabled
        return enabled if enabled is not None else self.auth.oidc.issuer is None

    @property
    def issuer_key_file(self) -> Path:
        return self.auth.builtin_issuer.key_file or self.data_dir / "secrets" / "issuer-keys.json"

    @property
    def audit_mac_key_file(self) -> Path:
        return self.audit.mac_key_file or self.data_dir / "secrets" / "audit-mac.key"

    @property
    def audit_signing_key_file(self) -> Path:
        return self.audit.signing_key_file or self.data_dir / "secrets" / "audit-checkpoint.pem"

    @property
    def audit_checkpoint_file(self) -> Path:
        return self.audit.checkpoint_file or self.data_dir / "audit" / "checkpoints.jsonl"

    @property
    def work_dir(self) -> Path:
        return self.production.local.work_dir or self.data_dir / "work"

    @property
    def products_dir(self) -> Path:
        return self.production.catalog.storage_dir or self.data_dir / "products"

    @property
    def store_path(self) -> Path:
        return self.store.path or self.data_dir / "events.db"

    @property
    def bus_url(self) -> str:
        """Where the embedded bus keeps its log: its own SQLite file, or the PostgreSQL state database."""
        if self.bus.path is not None:
            return f"sqlite:///{self.bus.path.expanduser().absolute()}"
        if self.is_postgres:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'bus.db'}"


def normalise_database_url(url: str) -> str:
    """Point plain ``postgresql://`` URLs at psycopg 3, the driver refsys ships."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def load_settings(config_file: str | Path | None = None) -> Settings:
    """Read, merge and validate the configuration, raising ``ConfigError`` with one line naming the culprit."""
    env_file = os.environ.get(CONFIG_ENV)
    path = Path(config_file) if config_file else (Path(env_file) if env_file else None)
    file_values = _read_yaml(path) if path else {}
    _refuse_unknown_env(os.environ)
    try:
        return Settings(**file_values)
    except ValidationError as exc:
        origin = f" (in {path})" if path else ""
        raise ConfigError(_first_error_line(exc) + origin) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return values


def _refuse_unknown_env(environ: Mapping[str, str]) -> None:
    known = {env_name(path) for path in setting_paths(sections=True)}
    for name in sorted(environ):
        if (
            not name.startswith(ENV_PREFIX)
            or name in NON_SETTING_ENV
            or name.startswith(NON_SETTING_ENV_PREFIXES)
        ):
            continue
        if name not in known:
            raise ConfigError(f"unknown environment variable {name}: no such setting")


def setting_paths(
    model: type[BaseModel] = Settings, *, sections: bool = False, prefix: str = ""
) -> list[str]:
    """Dotted names of every setting (``server.port``), and of the sections too when asked."""
    paths: list[str] = []
    for field_name, info in model.model_fields.items():
        path = prefix + field_name
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += [path] if sections else []
            paths += setting_paths(annotation, sections=sections, prefix=path + ".")
        else:
            paths.append(path)
    return paths


def env_name(path: str) -> str:
    """The environment variable of a setting: ``server.port`` -> ``REFSYS_SERVER__PORT``."""
    return ENV_PREFIX + path.upper().replace(".", "__")


def _first_error_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "configuration"
    if error["type"] == "extra_forbidden":
        return f"config error: unknown setting {where}"
    value = error.get("input")
    shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
    message = error["msg"].removeprefix("Value error, ")
    return f"config error: {where}: {message}{shown}"
