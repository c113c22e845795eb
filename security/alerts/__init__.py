"""Alerts and incidents: the sink of the alerts topic, and what a security officer works."""
