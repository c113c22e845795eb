"""The intake: framing, identity, stamping, dead letters, source health, and the store indexer."""
