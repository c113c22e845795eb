"""The service kernel: configuration, state database, identity, audit trail, event bus.

Nothing in here imports a domain package (``pipelines``, ``kpi``, ``security``); the domains build on it.
"""
