"""What every reference processor shares: options, the CPU work, failure injection and writing products.

A processor module only says how its input names map to output products (``Produce``); ``run`` does the rest
and returns the exit code documented in the package docstring.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TEMPFAIL = 75
"""sysexits.h ``EX_TEMPFAIL``: a transient failure, worth retrying."""
CHUNK_BYTES = 1 << 20
MAX_BLOCKS = 64
"""At most this many chunks of input are hashed (64 MiB): big inputs cost time, never unbounded memory."""
PROGRESS_STEPS = 10
NAME_TIME = "%Y%m%dT%H%M%S"
"""Times in product names: ``20261125T101031``."""


class ProcessingError(Exception):
    """The processor cannot make its products from what it was given (exit 1)."""


class UsageError(Exception):
    """Bad arguments or environment (exit 2)."""


@dataclass(frozen=True)
class Options:
    duration_s: float
    jitter: float
    fail_rate: float
    transient_rate: float
    seed: int | None
    products: int
    aux: list[Path]


@dataclass(frozen=True)
class OutputProduct:
    """One product to write: ``name`` is the product directory (``....SAFE``), archived as ``name + .zip``."""

    name: str
    sensing_start: datetime
    sensing_stop: datetime
    files: dict[str, bytes] = field(default_factory=dict)
    """Files inside the product directory, by relative path."""

    @property
    def file(self) -> str:
        return self.name + ".zip"


@dataclass(frozen=True)
class Context:
    """What a processor's ``Produce`` function may use to name and fill its products."""

    processor: str
    inputs: list[str]
    """Names of the input products (``.zip`` removed), in name order."""
    rng: random.Random
    now: datetime
    digest: str
    """SHA-256 of the work done over the inputs, so outputs depend on their inputs."""
    options: Options


Produce = Callable[[Context], list[OutputProduct]]
N = TypeVar("N", int, float)


def run(
    processor: str,
    produce: Produce,
    argv: Sequence[str] | None = None,
    *,
    needs: tuple[str, re.Pattern[str]] | None = None,
) -> int:
    """Parse options, check inputs and auxiliary data, burn CPU, maybe fail, write products; the exit code.

    ``needs``: (what, name pattern) of the input products the processor cannot work without; checked before
    any work, so a run fed the wrong product fails at once."""
    try:
        options = parse_options(processor, list(sys.argv[1:] if argv is None else argv))
        output_dir = _output_dir()
    except UsageError as exc:
        print(f"[{processor}] error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    rng = random.Random(options.seed)  # noqa: S311 - simulated draws and names, reproducible by seed
    input_dir = os.environ.get("REFSYS_INPUT_DIR")
    paths = input_paths(Path(input_dir)) if input_dir else []
    names = sorted(path.name.removesuffix(".zip") for path in paths)
    say(processor, f"start: {len(names)} input product(s){': ' + ', '.join(names) if names else ''}")
    try:
        if needs is not None and not any(needs[1].match(name) for name in names):
            raise ProcessingError(
                f"no {needs[0]} input product in REFSYS_INPUT_DIR ({len(names)} other input(s))"
            )
        for aux in options.aux:
            if not aux.is_file():
                raise ProcessingError(f"auxiliary file {aux} not found")
        duration = max(0.0, options.duration_s * (1 + rng.uniform(-options.jitter, options.jitter)))
        draw = rng.random()
        failing = draw < options.fail_rate + options.transient_rate
        share = rng.uniform(0.2, 0.9) if failing else 1.0
        digest = burn(processor, paths, duration * share)
        if failing:
            transient = draw < options.transient_rate
            kind = "transient" if transient else "permanent"
            print(f"[{processor}] error: injected {kind} failure", file=sys.stderr, flush=True)
            return EXIT_TEMPFAIL if transient else EXIT_FAILED
        now = datetime.now(UTC).replace(microsecond=0)
        products = produce(Context(processor, names, rng, now, digest, options))
        write_products(output_dir, products)
    except ProcessingError as exc:
        print(f"[{processor}] error: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    say(processor, f"done: {len(products)} product(s): {', '.join(p.file for p in products)}")
    return EXIT_OK


def parse_options(processor: str, argv: list[str]) -> Options:
    parser = _Parser(prog=f"pipelines.processors.{processor.replace('-', '_')}", description=__doc__)
    parser.add_argument("--duration-s", type=float, default=_env_number("PROC_DURATION_S", 1.0, float))
    parser.add_argument("--jitter", type=float, default=_env_number("PROC_JITTER", 0.2, float))
    parser.add_argument("--fail-rate", type=float, default=_env_number("PROC_FAIL_RATE", 0.0, float))
    parser.add_argument(
        "--transient-rate", type=float, default=_env_number("PROC_TRANSIENT_RATE", 0.0, float)
    )
    parser.add_argument("--seed", type=int, default=_env_number("PROC_SEED", None, int))
    parser.add_argument("--products", type=int, default=1)
    parser.add_argument("--aux", type=Path, action="append", default=[])
    values = parser.parse_args(argv)
    checks = [
        (values.duration_s >= 0, "--duration-s must be >= 0"),
        (0 <= values.jitter <= 1, "--jitter must be within [0, 1]"),
        (0 <= values.fail_rate <= 1, "--fail-rate must be within [0, 1]"),
        (0 <= values.transient_rate <= 1, "--transient-rate must be within [0, 1]"),
        (
            values.fail_rate + values.transient_rate <= 1,
            "--fail-rate plus --transient-rate must not exceed 1",
        ),
        (1 <= values.products <= 1000, "--products must be within [1, 1000]"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    return Options(
        duration_s=values.duration_s,
        jitter=values.jitter,
        fail_rate=values.fail_rate,
        transient_rate=values.transient_rate,
        seed=values.seed,
        products=values.products,
        aux=values.aux,
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _env_number(name: str, default: N | None, kind: Callable[[str], N]) -> N | None:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        raise UsageError(f"{name}={text!r} is not a number") from None


def _output_dir() -> Path:
    text = os.environ.get("REFSYS_OUTPUT_DIR")
    if not text:
        raise UsageError("REFSYS_OUTPUT_DIR is not set")
    path = Path(text)
    path.mkdir(parents=True, exist_ok=True)
    return path


def input_paths(input_dir: Path) -> list[Path]:
    """The input products: the entries of the input directory (files or product directories), hidden ones and
    an upstream step's ``manifest.json`` left out; symbolic links (how inputs are handed over) are followed."""
    if not input_dir.is_dir():
        return []
    return sorted(
        path for path in input_dir.iterdir() if not path.name.startswith(".") and path.name != "manifest.json"
    )


def burn(processor: str, paths: Sequence[Path], duration_s: float) -> str:
    """SHA-256 rounds over the input bytes (a seed block without inputs) until ``duration_s`` of CPU time is
    spent, with a progress line every tenth; the digest of it all."""
    blocks = list(_input_blocks(paths)) or [processor.encode() * 4096]
    digest = hashlib.sha256()
    start = time.process_time()
    next_step = 1
    rounds = 0
    while True:
        for block in blocks:
            digest.update(block)
        rounds += 1
        spent = time.process_time() - start
        while (
            duration_s > 0 and next_step < PROGRESS_STEPS and spent >= duration_s * next_step / PROGRESS_STEPS
        ):
            say(
                processor,
                f"{next_step * 100 // PROGRESS_STEPS}% ({rounds} rounds over {len(blocks)} block(s))",
            )
            next_step += 1
        if spent >= duration_s:
            break
    say(processor, f"100% ({rounds} rounds)")
    return digest.hexdigest()


def _input_blocks(paths: Sequence[Path]) -> list[bytes]:
    """The input bytes in chunks (a product directory's files in name order)."""
    files = [
        file
        for path in paths
        for file in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()))
    ]
    blocks: list[bytes] = []
    for file in files:
        try:
            with file.open("rb") as stream:
                while len(blocks) < MAX_BLOCKS and (chunk := stream.read(CHUNK_BYTES)):
                    blocks.append(chunk)
        except OSError as exc:
            raise ProcessingError(f"cannot read input {file}: {exc.strerror}") from None
    return blocks


def write_products(output_dir: Path, products: Sequence[OutputProduct]) -> None:
    """Each product as a zip of its directory (written aside, then renamed: never seen half-written), then
    ``manifest.json`` with the sensing times."""
    entries = []
    for product in products:
        target = output_dir / product.file
        partial = output_dir / f".{product.file}.partial"
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for relative, content in sorted(product.files.items()):
                archive.writestr(f"{product.name}/{relative}", content)
        partial.replace(target)
        entries.append(
            {
                "file": product.file,
                "sensing_start": rfc3339(product.sensing_start),
                "sensing_stop": rfc3339(product.sensing_stop),
            }
        )
    manifest = output_dir / "manifest.json"
    manifest.write_text(json.dumps({"products": entries}, indent=2) + "\n", encoding="utf-8")


def manifest_xml(context: Context, product_type: str, name: str, start: datetime, stop: datetime) -> bytes:
    """A small manifest in the spirit of the mission's own (``manifest.safe``, ``xfdumanifest.xml``)."""
    inputs = "".join(f"\n    <input>{source}</input>" for source in context.inputs)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<product name="{name}" type="{product_type}">\n'
        f"  <processor>{context.processor}</processor>\n"
        f"  <sensingStart>{rfc3339(start)}</sensingStart>\n  <sensingStop>{rfc3339(stop)}</sensingStop>\n"
        f"  <generated>{rfc3339(context.now)}</generated>\n  <inputs>{inputs}\n  </inputs>\n"
        f'  <checksum algorithm="SHA-256">{context.digest}</checksum>\n</product>\n'
    ).encode()


def measurement(context: Context, name: str, size: int = 4096) -> bytes:
    """Deterministic pseudo-measurement bytes derived from the work's digest and the product name."""
    seed = hashlib.sha256(f"{context.digest}:{name}".encode()).digest()
    blocks = (hashlib.sha256(seed + index.to_bytes(4, "big")).digest() for index in range(size // 32 + 1))
    return b"".join(blocks)[:size]


def name_time(moment: datetime) -> str:
    return moment.strftime(NAME_TIME)


def parse_name_time(text: str) -> datetime:
    return datetime.strptime(text, NAME_TIME).replace(tzinfo=UTC)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def recent_sensing(
    context: Context, *, min_age_min: int, max_age_min: int, length_s: int
) -> tuple[datetime, datetime]:
    """A plausible acquisition for a product made without input: some minutes before now."""
    start = context.now - timedelta(minutes=context.rng.randint(min_age_min, max_age_min))
    return start, start + timedelta(seconds=length_s)


def say(processor: str, message: str) -> None:
    print(f"[{processor}] {message}", flush=True)
