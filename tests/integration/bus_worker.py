"""Publisher and consumer processes for the bus's crash test (``test_bus.py``), run from the repository root:

    python -m tests.integration.bus_worker publish --url URL --publisher N --batches B --batch-size S
    python -m tests.integration.bus_worker consume --url URL --group G --member-id M --log FILE \
        [--stall-after N]

A consumer appends one line per processed record (``P partition offset id``) and one per commit
(``C partition:next ...``) to its log with unbuffered writes, so the log survives SIGKILL. With
``--stall-after N`` it hangs in the middle of a polled batch once it has processed N records, after writing
``STALLED done/total``: the test then kills it there, between processing and committing.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType

from control_plane.core.bus import SqlBus
from control_plane.core.db import create_db_engine

TOPIC = "telemetry"
PARTITIONS = 4
MEMBER_TIMEOUT_S = 1.5


def record_id(publisher: int, batch: int, index: int) -> str:
    return f"p{publisher}-b{batch}-r{index}"


def open_bus(url: str) -> SqlBus:
    # The test created the tables; these processes only use them.
    return SqlBus(
        create_db_engine(url), partitions=PARTITIONS, member_timeout_s=MEMBER_TIMEOUT_S, own_schema=False
    )


def publish(args: argparse.Namespace) -> None:
    with open_bus(args.url) as bus:
        for batch in range(args.batches):
            # A few keys per publisher, so that every partition gets records from several processes.
            key = f"source-{args.publisher}-{batch % 3}"
            records = [{"id": record_id(args.publisher, batch, i)} for i in range(args.batch_size)]
            bus.publish(TOPIC, key, records)


def consume(args: argparse.Namespace) -> None:
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    log = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    processed = 0
    with open_bus(args.url) as bus, bus.consumer(TOPIC, args.group, member_id=args.member_id) as consumer:
        while not stop.is_set():
            records = consumer.poll(max_records=20, timeout_s=0.2)
            for done, record in enumerate(records, start=1):
                os.write(log, f"P {record.partition} {record.offset} {record.value['id']}\n".encode())
                processed += 1
                if args.stall_after and processed >= args.stall_after and done < len(records):
                    os.write(log, f"STALLED {done}/{len(records)}\n".encode())
                    threading.Event().wait()  # hang mid-batch, uncommitted, until killed
            if records:
                consumer.commit(records)
                resume_at: dict[int, int] = {}
                for record in records:
                    resume_at[record.partition] = record.offset + 1
                os.write(
                    log, ("C " + " ".join(f"{p}:{o}" for p, o in sorted(resume_at.items())) + "\n").encode()
                )
    os.close(log)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bus_worker")
    commands = parser.add_subparsers(dest="command", required=True)
    pub = commands.add_parser("publish")
    pub.add_argument("--url", required=True)
    pub.add_argument("--publisher", type=int, required=True)
    pub.add_argument("--batches", type=int, required=True)
    pub.add_argument("--batch-size", type=int, required=True)
    con = commands.add_parser("consume")
    con.add_argument("--url", required=True)
    con.add_argument("--group", required=True)
    con.add_argument("--member-id", required=True)
    con.add_argument("--log", required=True)
    con.add_argument("--stall-after", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "publish":
        publish(args)
    else:
        consume(args)


if __name__ == "__main__":
    main(sys.argv[1:])
