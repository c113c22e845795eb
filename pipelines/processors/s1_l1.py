"""Sentinel-1 Level-1: one ``IW_GRDH_1S`` (ground range detected, high resolution) per ``IW_RAW__0S`` input."""

from __future__ import annotations

from pipelines.processors import common, sentinel1
from pipelines.processors.common import Context, OutputProduct


def produce(context: Context) -> list[OutputProduct]:
    return [
        item.product(context, "GRDH", 1, "IW_GRDH_1S") for item in sentinel1.acquisitions(context, "RAW_")
    ]


if __name__ == "__main__":
    raise SystemExit(common.run("s1-l1", produce, needs=sentinel1.needs("RAW_", "IW_RAW__0S")))
