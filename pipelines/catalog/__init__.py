"""The catalog and distribution: product registration with lineage, malware scanning, storage, download
quotas and retention (the HTTP side is ``pipelines/api/products.py``)."""

from pipelines.catalog.service import (
    Catalog,
    CatalogError,
    OutputContext,
    OutputError,
    ProductUnavailable,
    PublishedProduct,
    UnknownProduct,
)
from pipelines.catalog.storage import LocalStorage, Storage

__all__ = [
    "Catalog",
    "CatalogError",
    "LocalStorage",
    "OutputContext",
    "OutputError",
    "ProductUnavailable",
    "PublishedProduct",
    "Storage",
    "UnknownProduct",
]
