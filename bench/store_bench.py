"""Event store (SQLite): single-core write throughput, peak memory, and the dashboard query at scale.

Targets (issue: telemetry ingestion): the store path must leave room for normalise+store >= 30k events/s per core
(aim: >= 60k/s store-only); peak RSS under 1 GiB whatever the input size; over a 7-day set of 5M events, the last
24 h with a dataset filter and one free-text term, aggregated by terms(source.ip, 10) and date_histogram(1 h):
warm p95 under 200 ms.

    python bench/store_bench.py [--events 5000000] [--write-events 300000] [--batch 5000] [--dir DIR]

Documents are a synthetic mix shaped like the normalised sources (Suricata, Kubernetes audit, auditd, Falco,
Wazuh, Keycloak), about 1 KB each, generated before the clock starts for each batch.
"""

from __future__ import annotations

import argparse
import itertools
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import report
from control_plane.core import clock
from security.store import Aggregation, DateHistogramAgg, EventQuery, SqliteEventStore, TermsAgg

END = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
]
"""Filler vocabulary; the queried term ``denied`` is put in 5 % of the events."""
QUERY_TERM = "denied"


def _suricata(rng: random.Random, n: int) -> dict[str, Any]:
    src, dst = (
        f"10.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(256)}",
        f"192.168.1.{rng.randrange(256)}",
    )
    sid = rng.choice((2001219, 2010935, 2013028, 2024897))
    return {
        "event": {
            "kind": "alert",
            "category": ["network", "intrusion_detection"],
            "action": "alert",
            "module": "suricata",
            "severity": rng.randrange(1, 4),
        },
        "source": {"ip": src, "port": rng.randrange(1024, 65535)},
        "destination": {"ip": dst, "port": rng.choice((22, 80, 443, 3389))},
        "network": {"transport": "tcp", "protocol": "http"},
        "rule": {"id": str(sid), "name": f"ET SCAN rule {sid}"},
        "suricata": {
            "eve": {
                "event_type": "alert",
                "flow_id": n * 7919,
                "in_iface": "eth0",
                "alert": {
                    "signature_id": sid,
                    "signature": f"ET SCAN rule {sid}",
                    "category": "Attempted Information Leak",
                    "rev": 3,
                },
                "http": {
                    "hostname": "example.org",
                    "url": f"/api/v1/items/{n}",
                    "http_user_agent": "curl/8.5",
                    "status": 403,
                },
            }
        },
    }


def _k8s(rng: random.Random, n: int) -> dict[str, Any]:
    verb = rng.choice(("get", "list", "watch", "create", "delete", "patch"))
    user = rng.choice(("system:serviceaccount:prod:runner", "alice", "bob", "system:kube-scheduler"))
    return {
        "event": {
            "kind": "event",
            "category": ["configuration"],
            "action": verb,
            "module": "kubernetes",
            "outcome": rng.choice(("success", "failure")),
        },
        "user": {"name": user},
        "source": {"ip": f"10.244.{rng.randrange(16)}.{rng.randrange(256)}"},
        "kubernetes": {
            "audit": {
                "auditID": f"{n:032x}",
                "verb": verb,
                "stage": "ResponseComplete",
                "objectRef": {
                    "resource": rng.choice(("pods", "secrets", "jobs")),
                    "namespace": "prod",
                    "name": f"job-{n % 977}",
                },
                "user": {"username": user, "groups": ["system:authenticated"]},
                "responseStatus": {"code": rng.choice((200, 201, 403, 404))},
            }
        },
    }


def _auditd(rng: random.Random, n: int) -> dict[str, Any]:
    return {
        "event": {
            "kind": "event",
            "category": ["process"],
            "action": "executed",
            "module": "auditd",
            "outcome": "success",
        },
        "host": {"name": f"node-{rng.randrange(40):02d}"},
        "user": {"name": rng.choice(("root", "ops", "svc-eo"))},
        "process": {"name": rng.choice(("bash", "python3", "sshd")), "pid": rng.randrange(1, 65535)},
        "auditd": {
            "serial": n,
            "records": [
                {"type": "SYSCALL", "syscall": "execve", "success": "yes"},
                {"type": "EXECVE", "argc": 2, "a0": "/bin/ls"},
                {"type": "CWD", "cwd": "/var/lib/refsys"},
            ],
        },
    }


def _falco(rng: random.Random, n: int) -> dict[str, Any]:
    rule = rng.choice(("Terminal shell in container", "Read sensitive file untrusted", "Write below etc"))
    return {
        "event": {"kind": "alert", "category": ["process"], "action": rule, "module": "falco"},
        "host": {"name": f"node-{rng.randrange(40):02d}"},
        "process": {"name": "bash"},
        "message": f"{rule} (user=root container=job-{n % 977} shell=bash)",
        "falco": {
            "rule": rule,
            "priority": "Warning",
            "output_fields": {"proc.name": "bash", "container.id": f"{n:012x}", "fd.name": "/etc/shadow"},
        },
    }


_MAKERS = (
    (_suricata, "suricata.eve"),
    (_k8s, "kubernetes.audit"),
    (_auditd, "auditd.log"),
    (_falco, "falco"),
)


def make_doc(rng: random.Random, n: int, moment: datetime) -> dict[str, Any]:
    maker, dataset = _MAKERS[n % len(_MAKERS)]
    doc = maker(rng, n)
    words = " ".join(rng.choices(WORDS, k=12))
    if rng.random() < 0.05:
        words += f" {QUERY_TERM}"
    doc["@timestamp"] = clock.rfc3339(moment)
    doc["event"]["id"] = f"{rng.getrandbits(128):032x}"  # random, as audit ids and hashes are
    doc["event"]["dataset"] = dataset
    native = {key: value for key, value in doc.items() if key not in ("event", "@timestamp")}
    doc["event"]["original"] = orjson.dumps(
        {"timestamp": doc["@timestamp"], "text": words, **native}
    ).decode()
    return doc


def stream(count: int, days: float, seed: int = 7) -> Iterator[dict[str, Any]]:
    """``count`` documents spread evenly (with jitter) over the ``days`` before END, in time order."""
    rng = random.Random(seed)
    step_us = days * 86_400_000_000 / count
    start = END - timedelta(days=days)
    for n in range(count):
        yield make_doc(rng, n, start + timedelta(microseconds=int(n * step_us + rng.random() * step_us)))


def batches(docs: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load(store: SqliteEventStore, count: int, days: float, batch: int) -> tuple[float, float, int]:
    """Write ``count`` events; returns (wall seconds and CPU seconds spent inside ``write``, events stored)."""
    spent = cpu = 0.0
    stored = 0
    for docs in batches(stream(count, days), batch):
        started, started_cpu = time.perf_counter(), time.process_time()
        stored += store.write(docs)
        spent += time.perf_counter() - started
        cpu += time.process_time() - started_cpu
    return spent, cpu, stored


def write_figures(directory: Path, count: int, batch: int) -> dict[str, Any]:
    """Single-core write throughput into a fresh store, then the same ids again (all duplicates)."""
    store = SqliteEventStore(directory / f"write-{batch}.db")
    spent, cpu, stored = load(store, count, 1.0, batch)
    again = list(batches(itertools.islice(stream(count, 1.0), 20_000), batch))  # the same documents
    started = time.perf_counter()
    duplicates = sum(store.write(docs) for docs in again)
    again_s = time.perf_counter() - started
    store.close()
    return {
        "events": stored,
        "batch": batch,
        "events_per_s": round(stored / spent),
        "cpu_us_per_event": round(cpu / stored * 1e6, 1),
        "same_20k_ids_again_events_per_s": round(20_000 / again_s),
        "same_ids_stored_again": duplicates,
    }


def timed(function: Any, runs: int) -> dict[str, float]:
    function()  # warm-up
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 1),
        "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 1),
        "max_ms": round(samples[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5_000_000, help="size of the 7-day query set")
    parser.add_argument("--write-events", type=int, default=300_000, help="events per write figure")
    parser.add_argument("--batch", type=int, default=5000, help="events per write (also 1000 and 20000)")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the SQLite files go (default: a temp dir)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        writes = [write_figures(Path(tmp), args.write_events, batch) for batch in (1000, args.batch, 20_000)]

        store = SqliteEventStore(Path(tmp) / "query.db")
        load_s, load_cpu_s, _ = load(store, args.events, 7.0, args.batch)
        size_bytes = sum(path.stat().st_size for path in Path(tmp).glob("query.db*"))
        aggs: dict[str, Aggregation] = {
            "sources": TermsAgg("source.ip", 10),
            "per_hour": DateHistogramAgg(3600),
        }
        queries: dict[str, Any] = {}
        for term in (QUERY_TERM, "alpha"):
            last_day = EventQuery(
                start=END - timedelta(hours=24), end=END, datasets=["suricata.eve"], text=term
            )
            matching = store.aggregate(last_day, aggs)["count"]
            queries[f"dashboard_last_24h_suricata_text_{term}"] = {
                **timed(lambda q=last_day: store.aggregate(q, aggs), args.runs),
                "matching_events": matching,
            }
            queries[f"search_page_100_last_24h_suricata_text_{term}"] = timed(
                lambda q=last_day: store.search(q), args.runs
            )
        by_ip = EventQuery(start=END - timedelta(days=7), end=END, filters={"source.ip": ["10.1.2.3"]})
        queries["search_7d_all_datasets_source_ip"] = timed(lambda: store.search(by_ip), args.runs)
        started = time.perf_counter()
        dropped = store.drop_before("falco", END - timedelta(days=6))
        drop_s = time.perf_counter() - started
        store.close()
    report(
        "store_sqlite",
        {
            "write_single_core": writes,
            "query_set": {
                "events": args.events,
                "days": 7,
                "load_events_per_s": round(args.events / load_s),
                "load_cpu_us_per_event": round(load_cpu_s / args.events * 1e6, 1),
                "file_mib": round(size_bytes / 2**20),
            },
            **queries,
            "drop_before_falco_1_5_days": {"events": dropped, "seconds": round(drop_s, 2)},
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        },
    )


if __name__ == "__main__":
    main()
