"""Reference processors of the bundled chains: small programs that behave like real ones.

Each runs as its own process, ``{python} -m pipelines.processors.<name> [options]``, as the processor table
(``production.processors``, ``DEFAULT_PROCESSORS``) says; the executor replaces ``{python}`` with the
interpreter refsys itself runs on (``sys.executable``), so no separate installation is needed locally. On
Kubernetes the same module is the container's entrypoint.

The contract with the executor:
- inputs: the product files (or ``.SAFE`` directories) in ``REFSYS_INPUT_DIR`` (may be absent: no inputs);
- outputs: written into ``REFSYS_OUTPUT_DIR`` with the mission's real naming conventions, one zip archive of
  the product directory per product (``S2A_MSIL1C_..._.SAFE.zip``), plus ``manifest.json``
  ``{"products": [{"file", "sensing_start", "sensing_stop"}]}`` giving each file's sensing times (RFC 3339);
- progress: one line per step of the work on stdout (``[s2-l1c] 40% ...``), problems on stderr;
- exit codes: ``0`` done; ``1`` processing failure (bad or missing input, missing auxiliary file, injected
  permanent failure); ``2`` bad arguments or environment; ``75`` (``EX_TEMPFAIL``) injected transient failure,
  worth retrying.

Options (each also read from the environment, the option winning): ``--duration-s`` (``PROC_DURATION_S``) CPU
time to spend, ``--jitter`` (``PROC_JITTER``) relative spread of that duration, ``--fail-rate``
(``PROC_FAIL_RATE``) probability of a permanent failure, ``--transient-rate`` (``PROC_TRANSIENT_RATE``)
probability of a transient one, ``--seed`` (``PROC_SEED``) for reproducible draws and names, ``--products``
number of products made when the processor takes no input, ``--aux FILE`` auxiliary data the processor needs
(missing: exit 1; how a test models a cause an operator can fix). The work is real: SHA-256 over the input
bytes, round after round, until the duration is spent. ``noop`` does nothing and exits 0 at once (dispatch
benchmark). This package imports nothing, so that ``noop`` starts as fast as Python can.
"""
