"""Demo telemetry for ``refsys serve --demo``: a made-up ground segment whose sensors write their native formats.

The generator builds no ECS documents: it writes what Falco, Suricata, the Kubernetes API server, auditd, sshd
and Keycloak write, and hands the bytes to the real intake, so that the demo goes through the same adapters,
stamping, store and detection as production traffic, and Sigma rules meet events shaped like those they will
meet in the field. ``site`` is the made-up ground segment, ``formats`` the sensors' native formats,
``background`` the benign activity, ``scenarios`` the attacks, ``traffic`` the schedule that mixes them at the
configured rate, and ``runner`` the thread that feeds the intake.
"""
