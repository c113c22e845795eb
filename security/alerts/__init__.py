"""Alerts and incidents: the sink of the ``alerts`` topic, the incident workflow and their API."""
