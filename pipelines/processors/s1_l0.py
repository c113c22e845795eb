"""Sentinel-1 Level-0: raw downlink chunks (``S1_RAW``, named like the ground station's
``DCS_01_S1A_20261125054530012345_ch1_DSDB_00001.raw``) into one ``IW_RAW__0S`` product per satellite pass;
without input (a cron run), the pass is simulated.
"""

from __future__ import annotations

import re
from datetime import timedelta

from pipelines.processors import common
from pipelines.processors.common import Context, OutputProduct
from pipelines.processors.sentinel1 import Acquisition, absolute_orbit

CHUNK = re.compile(r"^DCS_\d{2}_(?P<unit>S1[A-D])_(?P<start>\d{8})(?P<time>\d{6})\d{6}_ch\d_DSDB_\d{5}\.raw$")
SLICE_S = 33


def produce(context: Context) -> list[OutputProduct]:
    passes: dict[str, list[str]] = {}
    for name in context.inputs:
        if match := CHUNK.match(name):
            passes.setdefault(match["unit"], []).append(f"{match['start']}T{match['time']}")
    if context.inputs and not passes:
        raise common.ProcessingError("no S1_RAW chunk (DCS_..._DSDB_NNNNN.raw) in REFSYS_INPUT_DIR")
    if not passes:
        for _ in range(context.options.products):
            start, _stop = common.recent_sensing(context, min_age_min=20, max_age_min=60, length_s=SLICE_S)
            passes.setdefault(context.rng.choice(("S1A", "S1C")), []).append(common.name_time(start))
    products = []
    for unit, times in sorted(passes.items()):
        for first in sorted(times) if not context.inputs else [min(times)]:
            start = common.parse_name_time(first)
            acquisition = Acquisition(
                unit=unit,
                mode="IW",
                polarisation="DV",
                start=start,
                stop=start + timedelta(seconds=SLICE_S),
                orbit=absolute_orbit(start),
                datatake=f"{context.rng.randrange(0x10000, 0xFFFFFF):06X}",
            )
            products.append(acquisition.product(context, "RAW", 0, "IW_RAW__0S"))
    return products


if __name__ == "__main__":
    raise SystemExit(common.run("s1-l0", produce))
