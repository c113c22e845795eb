"""What a benchmark ran on, and where its figures go: every benchmark prints both and writes JSON."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from control_plane.core import clock

RESULTS_DIR = Path(__file__).parent / "results"


def describe_machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def report(name: str, figures: dict[str, Any]) -> Path:
    """Print the figures with the machine they ran on, and write them to ``bench/results/NAME.json``."""
    result = {
        "benchmark": name,
        "time": clock.rfc3339(clock.utcnow()),
        "machine": describe_machine(),
        **figures,
    }
    text = json.dumps(result, indent=2)
    print(text)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(text + "\n")
    return path
