"""Detection: normalise + detect on one core, pySigma's SQLite backend on the same events, the memory of
correlation state, and ingest-to-alert latency on a running ``refsys serve``.

Targets (issue 5, acceptance 7): normalise + detect with the bundled plus every compilable SigmaHQ Linux,
Kubernetes and network rule at least 25k events/s per core; ingest-to-alert p99 under 1 s; correlation state for
1M distinct group keys under 1 GiB. Anchors: Zircolite (Python on SQLite) about 3.2k events/s per core with 765
rules; Wazuh analysisd 8-14k per thread; Hayabusa 11-13k.

    python bench/detect_bench.py [--events 1000000] [--sqlite-events 50000] [--groups 1000000]
                                 [--quick] [--dir DIR] [--sigmahq DIR]

**Corpus**: the ingest benchmark's (``bench/ingest_corpus.py``): raw lines in each source's native format built
from the shared samples, values varied per event (addresses, users, command lines, paths, ports, ids, times),
the sources mixed as the demo's traffic. The share of distinct values per field is measured on the normalised
events and printed.

**Rule sets**, loaded by the loader the server uses (``security.detection.ruleset.load``): (a) the bundled rules
(``security/rules``), (b) those plus every SigmaHQ rule under ``rules/{linux,application/kubernetes,network}``
that routes and maps fully (the others are reported as problems by the loader and do not run).

**Normalise + detect, one core.** One fresh process pinned to core 0 (``taskset -c 0``) reads the corpus in the
ingest path's 4 MiB batches, the sources interleaved: each batch goes through the intake (framing, adapter,
stamping, dead letters, health; publishing into a list) and its events then through both rule sets'
stateless stage (``Detector.match_records``: which rules match, and the records for alerts and correlations)
and stateful stage (``Correlator.feed``: rule alerts, correlation windows). Each part is timed in CPU time of the
process (other processes on the machine cannot inflate it); events/s per core = events / CPU seconds of
normalise + match + correlate. A second pass over a sample of the same events splits matching further: field
selection, the index and the rules' predicates, and building match records.

**SQLite backend, same core.** pySigma's SQLite backend (as Zircolite uses it; field-less keywords read as
``tests/sigma_sqlite.py`` does for the differential test) converts the same rules; a sample of the same events,
flattened as refsys flattens them (auditd per record), is loaded into one table per log-source route (only the
events the route accepts) and every rule's queries run over its route's table. Its events/s is extrapolated from
the sample (load + queries, and queries alone); the hits of both are compared and the ratio printed.

**Correlation state.** An ``event_count`` correlation grouped by ``source.ip`` with a window longer than the
stream is fed 1M matches with distinct addresses, so every group stays open: RSS growth of a fresh process, and
in another fresh process the bytes ``tracemalloc`` counts.

**Ingest-to-alert latency.** ``refsys serve`` (embedded defaults, bundled rules, temp data dir) on two cores; a
steady trickle of Kubernetes audit ``exec`` events through the ingest API, each raising the bundled exec rule's
alert; per alert, ``detected_at`` minus its event's ``event.ingested`` (p50/p99), see
``ingest_to_alert_latency``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest_bench import _batches, _config, _NoRecords, _peak_rss_mib, _SideBus, mix_counts, write_files
from bench.machine import report
from control_plane.core.bus import Consumer

SIGMAHQ = Path(__file__).resolve().parents[2] / "shared" / "data" / "sigmahq-sigma" / "rules"
SIGMAHQ_DIRS = ("linux", "application/kubernetes", "network")
TARGET_EVENTS_PER_S = 25_000
TARGET_STATE_MIB = 1024
DISTINCT_FIELDS = (
    "source.ip",
    "destination.ip",
    "source.port",
    "user.name",
    "process.command_line",
    "process.executable",
    "file.path",
    "url.original",
    "dns.question.name",
    "kubernetes.audit.objectRef.name",
    "event.id",
    "@timestamp",
)


# -- rule sets ------------------------------------------------------------------------------------------------------


def load_rules(name: str, sigmahq: Path) -> Any:
    """Rule set ``a`` (bundled) or ``b`` (bundled + SigmaHQ's Linux, Kubernetes and network rules)."""
    from security.detection import ruleset

    dirs = [sigmahq / d for d in SIGMAHQ_DIRS] if name == "b" else []
    return ruleset.load(bundled=True, rule_dirs=dirs)


def describe_rules(rules: Any) -> dict[str, Any]:
    return {
        "rules_running": len(rules.rules),
        "correlations": len(rules.correlations),
        "not_running": len(rules.problems),
        "per_dataset": dict(Counter(r.routing.route.dataset for r in rules.rules).most_common()),
    }


# -- normalise + detect -------------------------------------------------------------------------------------------


class _Capture(_SideBus):
    """The intake's bus: what it publishes is kept for detection, nothing is consumed."""

    def __init__(self) -> None:
        self.docs: list[Mapping[str, Any]] = []

    def publish(self, topic: str, key: str | None, records: Sequence[Mapping[str, Any]]) -> None:
        self.docs.extend(records)

    def consumer(self, topic: str, group: str, *, member_id: str | None = None) -> Consumer:
        return _NoRecords()

    def take(self) -> list[Mapping[str, Any]]:
        docs, self.docs = self.docs, []
        return docs


def _flat_get(doc: Mapping[str, Any], path: str) -> Any:
    from security import ecs

    return ecs.get(doc, path)


def child_detect(files: list[dict[str, Any]], directory: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The measured pass (see the module doc), then the split of matching on a sample."""
    from prometheus_client import CollectorRegistry

    from control_plane.cli.common import open_state, settings_from
    from security.detection.evaluation import Correlator, Detector
    from security.telemetry import Telemetry

    settings = settings_from(_config(directory / "state", max_backlog_events=10**9))
    engine = open_state(settings)
    bus = _Capture()
    telemetry = Telemetry(settings=settings, engine=engine, bus=bus, registry=CollectorRegistry())
    sigmahq = Path(options["sigmahq"])
    sets = {name: load_rules(name, sigmahq) for name in ("a", "b")}
    stages = {name: (Detector(rules), Correlator(rules)) for name, rules in sets.items()}
    cpu = {"normalise": 0.0} | {f"{n}_{part}": 0.0 for n in sets for part in ("match", "correlate")}
    counts = {f"{n}_{what}": 0 for n in sets for what in ("matches", "alerts")}
    distinct: dict[str, set[int]] = {field: set() for field in DISTINCT_FIELDS}
    having: Counter[str] = Counter()
    sample: list[Mapping[str, Any]] = []
    sample_path = directory / "sample.jsonl"
    events = seen = kept = 0
    stride = max(1, sum(int(f["events"]) for f in files) // options["sample"])
    gc.freeze()  # as refsys ingest does once set up
    clock = time.process_time
    started_wall = time.perf_counter()
    with sample_path.open("wb") as sample_file:
        for source, batch in _batches(files):
            began = clock()
            telemetry.intake.ingest(source, batch.data, observer="bench", origin=batch.origin)
            cpu["normalise"] += clock() - began
            docs = bus.take()
            for name, (detector, correlator) in stages.items():
                began = clock()
                records = [detector.match_records(doc, events + i) for i, doc in enumerate(docs)]
                matched = clock()
                alerts = 0
                for event_records in records:
                    for _key, record in event_records:
                        alerts += len(correlator.feed(record))
                cpu[f"{name}_match"] += matched - began
                cpu[f"{name}_correlate"] += clock() - matched
                counts[f"{name}_matches"] += sum(len(r) for r in records)
                counts[f"{name}_alerts"] += alerts
            events += len(docs)
            for doc in docs:  # not timed: the distinct share of values, and the sample for the other parts
                for field in DISTINCT_FIELDS:
                    value = _flat_get(doc, field)
                    if value is not None:
                        having[field] += 1
                        plain = value.__class__ in (str, int, float, bool)
                        distinct[field].add(
                            hash(value if plain else json.dumps(value, sort_keys=True, default=str))
                        )
                if kept < options["sample"] and seen % stride == 0:  # every source, in its share
                    kept += 1
                    sample.append(doc)
                    sample_file.write(orjson.dumps(doc) + b"\n")
                seen += 1
    wall = time.perf_counter() - started_wall
    for name, (_detector, correlator) in stages.items():
        began = clock()
        counts[f"{name}_alerts"] += len(correlator.flush())
        cpu[f"{name}_correlate"] += clock() - began
    telemetry.store.close()
    engine.dispose()

    per_event = {part: seconds / events * 1e6 for part, seconds in cpu.items()}
    out: dict[str, Any] = {
        "events": events,
        "process_wall_s": round(wall, 1),
        "peak_rss_mib": _peak_rss_mib(),
        "distinct_values": {
            field: {
                "distinct_share": round(len(distinct[field]) / having[field], 3),
                "events_with_field": having[field],
            }
            for field in DISTINCT_FIELDS
            if having[field]
        },
        "normalise_cpu_us_per_event": round(per_event["normalise"], 1),
    }
    for name, rules in sets.items():
        detect_us = per_event[f"{name}_match"] + per_event[f"{name}_correlate"]
        total_us = per_event["normalise"] + detect_us
        out[f"rule_set_{name}"] = {
            **describe_rules(rules),
            "matches": counts[f"{name}_matches"],
            "alerts": counts[f"{name}_alerts"],
            "cpu_us_per_event": {
                "normalise": round(per_event["normalise"], 1),
                "match": round(per_event[f"{name}_match"], 1),
                "correlate": round(per_event[f"{name}_correlate"], 1),
                "total": round(total_us, 1),
            },
            "detect_only_events_per_s": round(1e6 / detect_us),
            "events_per_s_per_core": round(1e6 / total_us),
            "match_split_on_sample": _split(sets[name], sample),
        }
    out["sample_path"] = str(sample_path)
    return out


def _split(rules: Any, docs: list[Mapping[str, Any]]) -> dict[str, Any]:
    """CPU µs per event of matching's parts, each timed as a prefix of the whole (best of three passes):
    choosing the dataset's plan and selecting its fields, then the index and predicates, then match records."""
    from security.detection.evaluation import Detector
    from security.detection.matcher import dataset_of

    detector = Detector(rules)
    matcher = detector.matcher

    def select(doc: Mapping[str, Any]) -> None:
        plan = matcher._plan(dataset_of(doc))
        if plan is not None:
            plan.select(doc)

    def best(work: Any) -> float:
        fastest = float("inf")
        for _ in range(3):
            began = time.process_time()
            for seq, doc in enumerate(docs):
                work(doc, seq)
            fastest = min(fastest, time.process_time() - began)
        return fastest / max(len(docs), 1) * 1e6

    selected = best(lambda doc, _seq: select(doc))
    matched = best(lambda doc, _seq: matcher.match(doc))
    recorded = best(detector.match_records)
    return {
        "events": len(docs),
        "select_us": round(selected, 2),
        "index_and_predicates_us": round(matched - selected, 2),
        "match_records_us": round(recorded - matched, 2),
        "match_total_us": round(recorded, 2),
    }


# -- pySigma's SQLite backend -------------------------------------------------------------------------------------------


def _route_rows(
    rules: Any, docs: list[Mapping[str, Any]]
) -> tuple[dict[str, list[tuple[int, dict[str, Any]]]], dict[str, list[Any]]]:
    """Per route: the flat views (auditd: one per record) the route accepts, keyed; and the route's rules."""
    from security.detection.matcher import flat_view, record_views

    by_route: dict[str, list[Any]] = {}
    routes: dict[str, Any] = {}
    for routed in rules.rules:
        route = routed.routing.route
        by_route.setdefault(route.name, []).append(routed)
        routes[route.name] = route
    rows: dict[str, list[tuple[int, dict[str, Any]]]] = {name: [] for name in routes}
    for number, doc in enumerate(docs):
        flat = flat_view(doc)
        for name, route in routes.items():
            if route.per_record:
                for position, view in record_views(flat, route.per_record):
                    if route.accepts(view):
                        rows[name].append((number * 10_000 + position, view))
            elif route.accepts(flat):
                rows[name].append((number * 10_000, flat))
    return rows, by_route


def child_sqlite(sample_path: Path, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The SQLite backend over the sample (see the module doc); refsys's matcher on the same events for hits."""
    from security.detection.matcher import Matcher
    from security.detection.ruleset import rule_ref
    from tests import sigma_sqlite

    rules = load_rules(name, Path(options["sigmahq"]))
    docs = [orjson.loads(line) for line in sample_path.read_bytes().splitlines()]
    gc.freeze()
    began = time.process_time()
    rows, by_route = _route_rows(rules, docs)
    flattened = time.process_time() - began
    db = sigma_sqlite.connect()
    began = time.process_time()
    tables = {
        route: sigma_sqlite.Table(db, route.replace("-", "_"), route_rows)
        for route, route_rows in rows.items()
    }
    loaded = time.process_time() - began
    queries: list[tuple[str, str]] = []
    refused: dict[str, str] = {}
    began = time.process_time()
    for route, routed_rules in by_route.items():
        for routed in routed_rules:
            ref = rule_ref(routed.compiled.rule)
            rule = copy.copy(routed.compiled.rule)
            rule._output = (
                True  # a rule only feeding correlations is left out of the backend's output otherwise
            )
            try:
                for query in tables[route].queries(rule):
                    queries.append((ref, re.sub(r"^SELECT \* FROM", "SELECT DISTINCT _key FROM", query)))
            except Exception as exc:  # the backend's refusal is counted, not a failure of the bench
                refused[ref] = f"{type(exc).__name__}: {exc}"[:200]
    converted = time.process_time() - began
    theirs: set[tuple[str, int]] = set()
    began = time.process_time()
    for ref, sql in queries:
        theirs.update((ref, row[0] // 10_000) for row in db.execute(sql))
    queried = time.process_time() - began
    matcher = Matcher(rules.rules)
    began = time.process_time()
    ours = {
        (rule_ref(m.rule.compiled.rule), number)
        for number, doc in enumerate(docs)
        for m in matcher.match(doc)
    }
    ours_s = time.process_time() - began
    ours = {hit for hit in ours if hit[0] not in refused}
    events = len(docs)
    return {
        "events": events,
        "rows": sum(len(r) for r in rows.values()),
        "tables": len(tables),
        "rules_converted": len({ref for ref, _ in queries}),
        "rules_refused_by_backend": len(refused),
        "refusals": dict(list(refused.items())[:10]),
        "cpu_s": {
            "flatten": round(flattened, 2),
            "load": round(loaded, 2),
            "convert_rules_once": round(converted, 2),
            "queries": round(queried, 2),
        },
        "events_per_s_load_and_queries": round(events / (flattened + loaded + queried)),
        "events_per_s_queries_only": round(events / queried) if queried else None,
        "refsys_matcher_events_per_s_same_sample": round(events / ours_s) if ours_s else None,
        "hits": {"sqlite": len(theirs), "refsys": len(ours), "shared": len(ours & theirs)},
    }


# -- correlation state ------------------------------------------------------------------------------------------------

CORRELATION_RULES = """
title: Bench match
name: bench_match
logsource: {product: linux}
detection:
  selection: {a: b}
  condition: selection
---
title: Bench count per address
name: bench_count
correlation:
  type: event_count
  rules: [bench_match]
  group-by: [source.ip]
  timespan: 1d
  condition: {gte: 1000000000}
"""


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child_correlation(groups: int, traced: bool) -> dict[str, Any]:
    """Feed ``groups`` matches with distinct ``source.ip``; every window stays open (1 day > the stream)."""
    from sigma.collection import SigmaCollection

    from security.sigma.correlation import CorrelationEngine

    engine = CorrelationEngine(SigmaCollection.from_yaml(CORRELATION_RULES), max_groups=groups + 1)
    start = datetime(2026, 11, 25, tzinfo=UTC).timestamp()
    gc.collect()
    gc.freeze()
    before = _rss_mib()
    if traced:
        tracemalloc.start()
    began = time.process_time()
    for number in range(groups):
        address = f"10.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}"
        event_id = f"0194b3c2-{number:08x}-7000-8000-000000000000"
        engine.feed("bench_match", start + number / 1000, number, {"source.ip": address}, ref=event_id)
    fed = time.process_time() - began
    if traced:
        current, peak = tracemalloc.get_traced_memory()
        return {"tracemalloc_mib": round(current / 2**20), "tracemalloc_peak_mib": round(peak / 2**20)}
    return {
        "groups_fed": groups,
        "groups_held": sum(len(g) for g in engine._groups.values()),
        "evicted": engine.counters["evicted_groups"],
        "feed_cpu_us_per_match": round(fed / groups * 1e6, 2),
        "rss_delta_mib": round(_rss_mib() - before),
        "peak_rss_mib": _peak_rss_mib(),
    }


# -- ingest-to-alert latency ----------------------------------------------------------------------------------------

EXEC_RULE = "906203cc-9cb3-407c-a7eb-6f9d357dbd4e"
"""The bundled ``kubectl exec into a pod`` rule (security/rules/k8s_exec.yml)."""


def _exec_event(number: int, moment: datetime) -> tuple[str, str]:
    """A Kubernetes audit ``exec`` into a pod by a user and from an address of its own, so that each raises its
    own alert (duplicates fold by user and address); returns (user, NDJSON line): the user names the event."""
    audit_id = f"0194b3c2-0000-7000-8000-{number:012x}"
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    line = json.dumps(
        {
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": audit_id,
            "stage": "ResponseComplete", "requestURI": f"/api/v1/namespaces/prod/pods/web-{number}/exec",
            "verb": "create", "user": {"username": f"bench-user-{number}"},
            "sourceIPs": [f"198.18.{number >> 8 & 255}.{number & 255}"],
            "objectRef": {"resource": "pods", "namespace": "prod", "name": f"web-{number}", "subresource": "exec"},
            "responseStatus": {"code": 101}, "requestReceivedTimestamp": stamp, "stageTimestamp": stamp,
        }
    )  # fmt: skip
    return f"bench-user-{number}", line


def _percentiles(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    if not ordered:
        return {"count": 0}

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    return {
        "count": len(ordered),
        "p50_ms": round(at(0.50) * 1000, 1),
        "p99_ms": round(at(0.99) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def ingest_to_alert_latency(directory: Path, events: int, rate: float) -> dict[str, Any]:
    """Ingest-to-alert latency on a running ``refsys serve`` (embedded defaults, bundled rules, two cores).

    ``events`` Kubernetes audit ``exec`` events are posted one per request at ``rate`` per second through
    ``POST /api/v1/ingest/k8s_audit``; each raises the bundled exec rule's alert. Once every alert is listed by
    ``GET /api/v1/alerts``, each alert's ``detected_at`` is set against its event's ``event.ingested`` (read
    back through ``POST /api/v1/events/search``) and, as a check on the server's stamp, against the moment the
    client sent the request (same machine, same clock).
    """
    import httpx

    from bench.api_bench import free_port
    from bench.ingest_bench import REFSYS, _environment, _wait_ready

    directory.mkdir(parents=True)
    env = _environment() | {"REFSYS_DATA_DIR": str(directory / "var"), "REFSYS_LOGGING__ACCESS_LOG": "false"}

    def refsys(*args: str) -> str:
        done = subprocess.run(
            [REFSYS, *args], cwd=directory, env=env, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    key = refsys("key", "create", "--role", "ingest", "--name", "bench")
    officer = {"Authorization": f"Bearer {refsys('token', 'create', '--role', 'security-officer')}"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = ["taskset", "-c", "0,1", REFSYS, "serve", "--port", str(port)]
    sent: dict[str, float] = {}
    with (directory / "serve.log").open("wb") as log:
        server = subprocess.Popen(command, cwd=directory, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            _wait_ready(base)
            with httpx.Client(timeout=30) as http:
                headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"}
                first = time.perf_counter()
                for number in range(events):
                    pause = first + number / rate - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)  # a steady trickle, as a live sensor sends
                    user, line = _exec_event(number, datetime.now(UTC))
                    sent[user] = time.time()
                    response = http.post(f"{base}/api/v1/ingest/k8s_audit", content=line, headers=headers)
                    response.raise_for_status()
                detected = _poll_alerts(http, base, officer, set(sent), deadline_s=120)
                ingested = _poll_ingested(http, base, officer, set(sent), deadline_s=120)
        finally:
            server.terminate()
            server.wait(timeout=60)
    from_ingested = [detected[a] - ingested[a] for a in detected if a in ingested]
    from_sent = [detected[a] - sent[a] for a in detected]
    return {
        "events_posted": events,
        "rate_per_s": rate,
        "alerts_seen": len(detected),
        "event_ingested_to_detected_at": _percentiles(from_ingested),
        "request_sent_to_detected_at": _percentiles(from_sent),
    }


def _poll_alerts(
    http: Any, base: str, headers: dict[str, str], users: set[str], deadline_s: float
) -> dict[str, float]:
    """User -> ``detected_at`` (POSIX seconds) of the exec rule's alerts, once all are listed."""
    deadline = time.monotonic() + deadline_s
    detected: dict[str, float] = {}
    while time.monotonic() < deadline:
        detected.clear()
        cursor = None
        while True:
            params = {"rule_id": EXEC_RULE, "limit": 500} | ({"cursor": cursor} if cursor else {})
            page = http.get(f"{base}/api/v1/alerts", params=params, headers=headers).json()
            for alert in page["items"]:
                for user in alert["entities"].get("user", []):
                    if user in users:
                        detected[user] = datetime.fromisoformat(alert["detected_at"]).timestamp()
            cursor = page["next_cursor"]
            if not cursor:
                break
        if len(detected) >= len(users):
            break
        time.sleep(0.5)
    return detected


def _poll_ingested(
    http: Any, base: str, headers: dict[str, str], users: set[str], deadline_s: float
) -> dict[str, float]:
    """User -> ``event.ingested`` (POSIX seconds) of the posted events, once the store holds them all."""
    deadline = time.monotonic() + deadline_s
    found: dict[str, float] = {}
    now = datetime.now(UTC)
    while time.monotonic() < deadline and len(found) < len(users):
        after: list[Any] | None = None
        while True:
            body: dict[str, Any] = {
                "start": (now - timedelta(hours=1)).isoformat(), "end": (now + timedelta(hours=1)).isoformat(),
                "datasets": ["kubernetes.audit"], "size": 1000, "sort": "asc",
            }  # fmt: skip
            if after is not None:
                body["search_after"] = after
            result = http.post(f"{base}/api/v1/events/search", json=body, headers=headers).json()
            for hit in result["hits"]:
                user = hit["event"].get("user", {}).get("name")
                ingested = hit["event"].get("event", {}).get("ingested")
                if user in users and ingested:
                    found[user] = datetime.fromisoformat(ingested).timestamp()
            if len(result["hits"]) < 1000:
                break
            after = result["hits"][-1]["sort"]
        if len(found) < len(users):
            time.sleep(0.5)
    return found


# -- main ---------------------------------------------------------------------------------------------------------------


def run_child(mode: str, payload: Any, directory: Path, *args: str) -> dict[str, Any]:
    """Run ``mode`` in a fresh process pinned to core 0; its figures come back as JSON on stdout."""
    command = [
        "taskset",
        "-c",
        "0",
        sys.executable,
        __file__,
        "--child",
        mode,
        "--dir",
        str(directory),
        *args,
    ]
    done = subprocess.run(command, input=json.dumps(payload), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child {mode} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def child_main(mode: str, directory: Path, args: argparse.Namespace) -> None:
    payload = json.loads(sys.stdin.read())
    if mode == "detect":
        result = child_detect(payload["files"], directory, payload["options"])
    elif mode == "sqlite":
        result = child_sqlite(Path(payload["sample"]), payload["rules"], payload["options"])
    else:
        result = child_correlation(payload["groups"], traced=mode == "correlation-traced")
    print(json.dumps(result))


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the mix")
    parser.add_argument("--sqlite-events", type=int, default=50_000, help="sample for the SQLite backend")
    parser.add_argument("--groups", type=int, default=1_000_000, help="distinct correlation group keys")
    parser.add_argument("--latency-events", type=int, default=300, help="exec events posted to serve")
    parser.add_argument("--latency-rate", type=float, default=20.0, help="events posted per second")
    parser.add_argument("--sigmahq", type=Path, default=SIGMAHQ, help="SigmaHQ's rules directory")
    parser.add_argument("--quick", action="store_true", help="a small run to check the bench works")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the temp files go (default: the temp dir)"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.dir, args)
        return
    if args.quick:
        args.events, args.sqlite_events, args.groups, args.latency_events = 30_000, 5_000, 50_000, 40
    options = {"sigmahq": str(args.sigmahq), "sample": args.sqlite_events}
    began = time.perf_counter()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="detect-bench-") as scratch:
        tmp = Path(scratch)
        now = datetime.now(UTC).replace(microsecond=0)
        jobs = [
            (tmp / f"mix-{source}.log", source, count) for source, count in mix_counts(args.events).items()
        ]
        started = time.perf_counter()
        files = write_files(jobs, start=now - timedelta(hours=24), end=now, seed=3)
        figures["corpus"] = {
            "files": {
                Path(f["path"]).name: {"events": f["events"], "mib": round(f["bytes"] / 2**20, 1)}
                for f in files
            },
            "generated_in_s": round(time.perf_counter() - started, 1),
        }
        _say(f"corpus written in {figures['corpus']['generated_in_s']} s")

        detect = run_child("detect", {"files": files, "options": options}, tmp)
        figures["corpus"]["distinct_values"] = detect.pop("distinct_values")
        sample = detect.pop("sample_path")
        for name in ("a", "b"):
            detect[f"rule_set_{name}"]["target_events_per_s"] = TARGET_EVENTS_PER_S
            detect[f"rule_set_{name}"]["met"] = (
                detect[f"rule_set_{name}"]["events_per_s_per_core"] >= TARGET_EVENTS_PER_S
            )
        figures["normalise_and_detect_one_core"] = detect
        for name in ("a", "b"):
            part = detect[f"rule_set_{name}"]
            _say(
                f"({name}) {part['rules_running']} rules: {part['events_per_s_per_core']} events/s per core "
                f"(normalise + detect), detect alone {part['detect_only_events_per_s']}/s, µs/event {part['cpu_us_per_event']}"
            )
        for path in files:
            Path(path["path"]).unlink()

        comparison: dict[str, Any] = {}
        for name in ("a", "b"):
            theirs = run_child("sqlite", {"sample": sample, "rules": name, "options": options}, tmp)
            ours = detect[f"rule_set_{name}"]
            theirs["ratio_refsys_detect_to_sqlite"] = round(
                ours["detect_only_events_per_s"] / theirs["events_per_s_load_and_queries"], 1
            )
            theirs["ratio_refsys_normalise_and_detect_to_sqlite"] = round(
                ours["events_per_s_per_core"] / theirs["events_per_s_load_and_queries"], 1
            )
            comparison[f"rule_set_{name}"] = theirs
            _say(
                f"({name}) SQLite backend: {theirs['events_per_s_load_and_queries']} events/s (load + queries), "
                f"refsys detect {theirs['ratio_refsys_detect_to_sqlite']}x"
            )
        figures["pysigma_sqlite_backend_one_core"] = comparison

        held = run_child("correlation", {"groups": args.groups}, tmp)
        held |= run_child("correlation-traced", {"groups": args.groups}, tmp)
        held["target_mib"] = TARGET_STATE_MIB
        held["met"] = max(held["rss_delta_mib"], held["tracemalloc_mib"]) < TARGET_STATE_MIB
        figures["correlation_state"] = held
        _say(
            f"correlation state, {args.groups} groups: RSS +{held['rss_delta_mib']} MiB, traced {held['tracemalloc_mib']} MiB"
        )

        latency = ingest_to_alert_latency(tmp / "serve", args.latency_events, args.latency_rate)
        latency["target_p99_ms"] = 1000
        measured = latency["event_ingested_to_detected_at"]
        latency["met"] = bool(measured.get("count")) and measured["p99_ms"] < 1000
        figures["ingest_to_alert_latency_serve_two_cores"] = latency
        _say(f"ingest to alert: {measured}")
    figures["bench_wall_s"] = round(time.perf_counter() - began)
    report("detect", figures)


if __name__ == "__main__":
    main()
