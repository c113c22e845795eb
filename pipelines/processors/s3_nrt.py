"""Sentinel-3 near-real-time Level-1: for each frame of a simulated dump, an OLCI full-resolution product
(``OL_1_EFR___``) and an SLSTR radiance product (``SL_1_RBT___``), named like
``S3A_OL_1_EFR____20261125T101031_20261125T101331_20261125T120000_0179_112_022_2160_PS1_O_NR_004.SEN3``.
"""

from __future__ import annotations

from datetime import datetime

from pipelines.processors import common
from pipelines.processors.common import Context, OutputProduct

FRAME_S = 180
PRODUCT_TYPES = ("OL_1_EFR___", "SL_1_RBT___")
CENTRES = {"S3A": "PS1", "S3B": "PS2"}
"""Processing centre of each unit's NRT products."""


def produce(context: Context) -> list[OutputProduct]:
    products = []
    for _ in range(context.options.products):
        start, stop = common.recent_sensing(context, min_age_min=30, max_age_min=120, length_s=FRAME_S)
        unit = context.rng.choice(sorted(CENTRES))
        instance = f"{FRAME_S:04d}_{context.rng.randint(100, 130):03d}_{context.rng.randint(1, 385):03d}_" + (
            f"{context.rng.randrange(0, 4000, 60):04d}"
        )
        for product_type in PRODUCT_TYPES:
            products.append(_product(context, unit, product_type, start, stop, instance))
    return products


def _product(
    context: Context, unit: str, product_type: str, start: datetime, stop: datetime, instance: str
) -> OutputProduct:
    name = (
        f"{unit}_{product_type}_{common.name_time(start)}_{common.name_time(stop)}_"
        f"{common.name_time(context.now)}_{instance}_{CENTRES[unit]}_O_NR_004.SEN3"
    )
    files = {
        "xfdumanifest.xml": common.manifest_xml(context, product_type, name, start, stop),
        "Oa08_radiance.nc" if product_type.startswith("OL") else "S8_BT_in.nc": common.measurement(
            context, name
        ),
    }
    return OutputProduct(name, start, stop, files)


if __name__ == "__main__":
    raise SystemExit(common.run("s3-nrt", produce))
