"""The ``refsys`` command.

Exit codes: 0 success, 1 a failed check (audit tamper, a refused operation), 2 usage or configuration errors.
Errors go to stderr, one line each.
"""

from __future__ import annotations

import click

from control_plane.cli import kernel, pipelines, production, rules, telemetry


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="refsys")
def main() -> None:
    """refsys: control plane for an Earth-observation ground segment."""


kernel.register(main)
telemetry.register(main)
pipelines.register(main)
production.register(main)
rules.register(main)
