"""Streaming detection: the rule set, the matcher, the matching and correlation stages, offline evaluation."""
