"""Sentinel-2 MSI Level-1C: makes ``S2MSI1C`` tiles from an acquisition (no input product: the L0 side is out of
scope, so the datatake is simulated), named like ``S2A_MSIL1C_20261125T101031_N0511_R022_T32TQM_20261125T120000.SAFE``.
"""

from __future__ import annotations

from pipelines.processors import common
from pipelines.processors.common import Context, OutputProduct

TILES = ("32TQM", "31UFU", "33UUP", "30TWT", "32ULC", "29SND", "35VLG", "31TCJ")
"""Real MGRS tiles (Alps, Paris, Berlin, Pyrenees, Rhine, Lisbon, Finland, Toulouse)."""
UNITS = ("S2A", "S2B", "S2C")
BASELINE = "N0511"


def produce(context: Context) -> list[OutputProduct]:
    products = []
    for _ in range(context.options.products):
        start, stop = common.recent_sensing(context, min_age_min=60, max_age_min=180, length_s=5)
        unit = context.rng.choice(UNITS)
        orbit = context.rng.randint(1, 143)
        tile = context.rng.choice(TILES)
        name = (
            f"{unit}_MSIL1C_{common.name_time(start)}_{BASELINE}_R{orbit:03d}_T{tile}_"
            f"{common.name_time(context.now)}.SAFE"
        )
        files = {
            "manifest.safe": common.manifest_xml(context, "S2MSI1C", name, start, stop),
            "MTD_MSIL1C.xml": common.manifest_xml(context, "S2MSI1C", name, start, stop),
            f"GRANULE/L1C_T{tile}/IMG_DATA/T{tile}_{common.name_time(start)}_B04.jp2": common.measurement(
                context, name
            ),
        }
        products.append(OutputProduct(name, start, stop, files))
    return products


if __name__ == "__main__":
    raise SystemExit(common.run("s2-l1c", produce))
