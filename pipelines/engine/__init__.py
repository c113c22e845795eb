"""The run engine: runs and steps persisted, scheduled on an executor, recovered after a crash.

``Engine.submit``/``add_input`` are what triggers call; ``cancel``/``retry``/``resubmit``/``drop`` what operators
do. See ``core`` for the scheduling round, ``steps`` for a step's life, ``states`` for the transition tables.
"""

from __future__ import annotations

from pipelines.engine.core import Engine
from pipelines.engine.logs import StepLogs
from pipelines.engine.requests import ActionNotAllowed, BadRunRequest, RunError, RunNotFound, RunRequest
from pipelines.engine.states import IllegalTransition, RunState, StepState

__all__ = [
    "ActionNotAllowed",
    "BadRunRequest",
    "Engine",
    "IllegalTransition",
    "RunError",
    "RunNotFound",
    "RunRequest",
    "RunState",
    "StepLogs",
    "StepState",
]
