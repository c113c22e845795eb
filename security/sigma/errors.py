"""The one error the rule compiler raises, so callers can skip a bad rule and report it instead of crashing."""

from __future__ import annotations


class SigmaCompileError(Exception):
    """A rule that cannot be compiled; names the rule (id, else title, else source) and the reason."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"rule {rule}: {reason}")
        self.rule = rule
        self.reason = reason


class UnsupportedValue(Exception):
    """Raised inside value compilation; the rule compiler wraps it in a SigmaCompileError naming the rule."""
