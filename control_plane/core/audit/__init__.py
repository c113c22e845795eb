"""The tamper-evident audit trail: chained, MACed records, signed checkpoints of the head, and verification."""
