"""Modifier names the Sigma specification defines but pySigma 1.5 does not register.

pySigma applies modifiers while it parses, looking each name up in ``sigma.modifiers.modifier_mapping``; the
specification's appendix names ``utf16le`` (with ``wide`` as its alias), which pySigma 1.5 only knows as
``wide``, so rules written to the specification would be refused as "unknown modifier". Registering the alias
(never replacing an existing entry) makes them parse with pySigma's own UTF-16LE encoder.
"""

from __future__ import annotations

from sigma.modifiers import SigmaWideModifier, modifier_mapping

SPEC_ALIASES = {"utf16le": SigmaWideModifier}


def register_spec_aliases() -> None:
    """Idempotent: only adds names pySigma does not already define."""
    for name, modifier in SPEC_ALIASES.items():
        modifier_mapping.setdefault(name, modifier)
