"""Sentinel-1 product names, shared by the L0, L1 and L2 reference processors.

``S1A_IW_RAW__0SDV_20261125T054530_20261125T054603_061234_07A1B2_C3D4.SAFE``: unit, mode, type (4 characters,
``_``-padded), level, class and polarisation, sensing start and stop, absolute orbit, mission datatake id,
product CRC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from pipelines.processors import common
from pipelines.processors.common import Context, OutputProduct

NAME = re.compile(
    r"^(?P<unit>S1[A-D])_(?P<mode>IW|EW|SM|WV)_(?P<kind>RAW_|SLC_|GRDH|OCN_)_(?P<level>[0-2])S(?P<pol>SH|SV|DH|DV)_"
    r"(?P<start>\d{8}T\d{6})_(?P<stop>\d{8}T\d{6})_(?P<orbit>\d{6})_(?P<datatake>[0-9A-F]{6})_[0-9A-F]{4}\.SAFE$"
)
ORBIT_EPOCH = datetime(2014, 4, 3, tzinfo=UTC)
ORBIT_S = 12 * 86400 / 175
"""Sentinel-1's repeat cycle: 175 orbits in 12 days."""


@dataclass(frozen=True)
class Acquisition:
    unit: str
    mode: str
    polarisation: str
    start: datetime
    stop: datetime
    orbit: int
    datatake: str

    def product(self, context: Context, kind: str, level: int, product_type: str) -> OutputProduct:
        crc = context.digest[:4].upper()
        name = (
            f"{self.unit}_{self.mode}_{kind:_<4}_{level}S{self.polarisation}_{common.name_time(self.start)}_"
            f"{common.name_time(self.stop)}_{self.orbit:06d}_{self.datatake}_{crc}.SAFE"
        )
        measurement = f"measurement/{self.unit.lower()}-{self.mode.lower()}-{kind.lower().strip('_')}-vv-{self.orbit:06d}.dat"
        files = {
            "manifest.safe": common.manifest_xml(context, product_type, name, self.start, self.stop),
            measurement: common.measurement(context, name),
        }
        return OutputProduct(name, self.start, self.stop, files)


def needs(kind: str, product_type: str) -> tuple[str, re.Pattern[str]]:
    """``common.run``'s ``needs`` for inputs of ``kind``."""
    return product_type, re.compile(
        NAME.pattern.replace("(?P<kind>RAW_|SLC_|GRDH|OCN_)", f"(?P<kind>{kind})")
    )


def absolute_orbit(moment: datetime) -> int:
    return 1 + int((moment - ORBIT_EPOCH).total_seconds() // ORBIT_S)


def acquisitions(context: Context, kind: str) -> list[Acquisition]:
    """The acquisitions of the input products of ``kind`` (``RAW_``, ``GRDH`` ...)."""
    matches = [match for name in context.inputs if (match := NAME.match(name)) and match["kind"] == kind]
    return [
        Acquisition(
            unit=match["unit"],
            mode=match["mode"],
            polarisation=match["pol"],
            start=common.parse_name_time(match["start"]),
            stop=common.parse_name_time(match["stop"]),
            orbit=int(match["orbit"]),
            datatake=match["datatake"],
        )
        for match in matches
    ]
