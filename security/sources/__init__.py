"""Telemetry source adapters: one module per source, registered by name in ``ADAPTERS``."""
