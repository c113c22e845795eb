"""Sentinel-2 MSI Level-2A: one ``S2MSI2A`` per ``S2MSI1C`` input, same datatake, orbit and tile, a new
generation time (``S2A_MSIL2A_20261125T101031_N0511_R022_T32TQM_20261125T123000.SAFE``).
"""

from __future__ import annotations

import re
from datetime import timedelta

from pipelines.processors import common
from pipelines.processors.common import Context, OutputProduct

L1C = re.compile(
    r"^(?P<unit>S2[A-D])_MSIL1C_(?P<start>\d{8}T\d{6})_(?P<rest>N\d{4}_R\d{3}_T(?P<tile>\w{5}))_\d{8}T\d{6}\.SAFE$"
)
DATATAKE_S = 5


def produce(context: Context) -> list[OutputProduct]:
    matches = [match for name in context.inputs if (match := L1C.match(name))]
    products = []
    for match in matches:
        start = common.parse_name_time(match["start"])
        stop = start + timedelta(seconds=DATATAKE_S)
        name = f"{match['unit']}_MSIL2A_{match['start']}_{match['rest']}_{common.name_time(context.now)}.SAFE"
        tile = match["tile"]
        files = {
            "manifest.safe": common.manifest_xml(context, "S2MSI2A", name, start, stop),
            "MTD_MSIL2A.xml": common.manifest_xml(context, "S2MSI2A", name, start, stop),
            f"GRANULE/L2A_T{tile}/IMG_DATA/R10m/T{tile}_{match['start']}_B04_10m.jp2": common.measurement(
                context, name
            ),
            f"GRANULE/L2A_T{tile}/IMG_DATA/R20m/T{tile}_{match['start']}_SCL_20m.jp2": common.measurement(
                context, name + "SCL", 1024
            ),
        }
        products.append(OutputProduct(name, start, stop, files))
    return products


if __name__ == "__main__":
    raise SystemExit(common.run("s2-l2a", produce, needs=("S2MSI1C", L1C)))
