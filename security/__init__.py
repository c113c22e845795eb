"""Telemetry sources and normalisation, event store, Sigma engine, correlation, alerts, incidents, hooks."""
