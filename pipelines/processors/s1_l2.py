"""Sentinel-1 Level-2: one ``IW_OCN__2S`` (ocean wind, waves and currents) per ``IW_GRDH_1S`` input."""

from __future__ import annotations

from pipelines.processors import common, sentinel1
from pipelines.processors.common import Context, OutputProduct


def produce(context: Context) -> list[OutputProduct]:
    return [item.product(context, "OCN", 2, "IW_OCN__2S") for item in sentinel1.acquisitions(context, "GRDH")]


if __name__ == "__main__":
    raise SystemExit(common.run("s1-l2", produce, needs=sentinel1.needs("GRDH", "IW_GRDH_1S")))
