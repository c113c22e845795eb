"""Production: chain specs, the run engine, executors, triggers, catalog and distribution."""
