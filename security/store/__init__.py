"""The event store: embedded SQLite (FTS5) or OpenSearch, behind ``base.EventStore``."""
