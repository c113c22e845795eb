"""The batch/v1 Job that runs one step execution on Kubernetes, as a plain manifest dict.

Kept apart from the executor so that the manifest can be built and validated offline (``kubernetes-validate``
in the tests) without a cluster or an API client. The Pod follows the *restricted* Pod Security Standard: it
runs as a fixed non-root user, with the RuntimeDefault seccomp profile, every capability dropped, no privilege
escalation and a read-only root filesystem; the only writable places are one size-limited emptyDir volume
mounted as the working directory (with ``in/`` and ``out/``) and as ``/tmp``, and the output directory on the
shared work volume when one is configured. It gets no service-account token: a processor has no business
talking to the Kubernetes API.

Staging goes through shared volumes (one NFS/CephFS filesystem mounted by the control plane and the Jobs), so
nothing is copied: ``out/`` is the subPath ``RUN/STEP/ATTEMPT/out`` of ``production.kubernetes.work_claim``,
which the control plane reads under ``work_mount`` to publish; each input product is the subPath of its file
on ``products_claim`` (the catalog storage), mounted read-only at ``in/NAME``, so the Pod sees its own inputs
and nothing else of the catalog. Arguments and environment values naming an input by its control-plane path
(``{inputs}``) name it by its path in the Pod instead.

The Job never retries by itself (``backoffLimit: 0``): the engine owns retries, with backoff, and counts them.
Its ``podFailurePolicy`` only ignores a Pod that was disrupted (preempted by a higher lane's PriorityClass,
evicted, drained), so such a Pod is replaced without spending one of the engine's attempts.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from control_plane.core.config import Settings
from pipelines.executors.base import StepLaunch

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "refsys"
SELECTOR = f"{MANAGED_BY}={MANAGER}"
"""Label selector of every Job (and Pod) this executor creates."""
LABEL_RUN_ID = "refsys.io/run-id"
LABEL_STEP = "refsys.io/step"
LABEL_ATTEMPT = "refsys.io/attempt"
LABEL_CHAIN = "refsys.io/chain"
LABEL_LANE = "refsys.io/lane"
ANNOTATION_EXECUTION = "refsys.io/execution"
"""``run_id/step/attempt`` verbatim (label values are cut and cleaned to fit the label syntax)."""
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
"""Label the Job controller puts on the Job's Pods (Kubernetes >= 1.27; ``job-name`` before)."""

CONTAINER = "step"
RUN_AS_USER = 65532
"""The conventional ``nonroot`` user of distroless images; any non-zero id satisfies the restricted PSS."""
WORK_DIR = "/work"
INPUT_DIR = f"{WORK_DIR}/in"
OUTPUT_DIR = f"{WORK_DIR}/out"
TMP_DIR = "/tmp"  # noqa: S108 - inside the Pod, on the Pod's own emptyDir volume
WORK_VOLUME = "work"
OUTPUT_VOLUME = "outputs"
"""The shared work volume (``production.kubernetes.work_claim``), when configured."""
PRODUCTS_VOLUME = "products"
"""The catalog storage (``production.kubernetes.products_claim``), read-only, when configured."""
PYTHON_IN_IMAGE = "python3"
"""What ``{python}`` in a processor's command means inside its image."""

_NAME_MAX = 63
_HASH_CHARS = 10
_LABEL_VALUE_INVALID = re.compile(r"[^A-Za-z0-9_.-]+")
_DNS_INVALID = re.compile(r"[^a-z0-9-]+")


class ManifestError(ValueError):
    """A step that cannot be turned into a Job; ``str()`` names the item and what is missing."""


def job_name(run_id: str, step: str, attempt: int) -> str:
    """The Job's name: deterministic, so that a second ``start`` of the same execution meets the first Job
    (409) instead of running it twice; a DNS-1123 label of at most 63 characters (the Job controller copies it
    into a label of each Pod); readable (the step and attempt) and unique (a hash of the whole execution id)."""
    digest = hashlib.sha256(f"{run_id}/{step}/{attempt}".encode()).hexdigest()[:_HASH_CHARS]
    suffix = f"-{attempt}-{digest}"
    slug = _DNS_INVALID.sub("-", step.lower()).strip("-")
    prefix = f"refsys-{slug}"[: _NAME_MAX - len(suffix)].rstrip("-")
    return f"{prefix}{suffix}"


def label_value(text: str) -> str:
    """``text`` made a valid label value: at most 63 characters of ``[A-Za-z0-9_.-]``, alphanumeric at both
    ends (the exact value is kept in the ``refsys.io/execution`` annotation)."""
    cleaned = _LABEL_VALUE_INVALID.sub("-", text)[:_NAME_MAX]
    return cleaned.strip("-_.")


def job_labels(launch: StepLaunch) -> dict[str, str]:
    return {
        MANAGED_BY: MANAGER,
        LABEL_RUN_ID: label_value(launch.run_id),
        LABEL_STEP: label_value(launch.step),
        LABEL_ATTEMPT: str(launch.attempt),
        LABEL_CHAIN: label_value(launch.chain_id),
        LABEL_LANE: label_value(launch.lane),
    }


def cpu_quantity(cores: float) -> str:
    """CPU cores as a Kubernetes quantity in millicores (``0.5`` -> ``500m``); never below ``1m``."""
    return f"{max(1, round(cores * 1000))}m"


def mib_quantity(mib: int) -> str:
    return f"{mib}Mi"


def build_job(launch: StepLaunch, settings: Settings) -> dict[str, Any]:
    """The Job manifest of ``launch``; raises ManifestError when its processor has no image or its inputs
    cannot be mounted (see ``pod_inputs``)."""
    processor = launch.processor
    if not processor.image:
        raise ManifestError(
            f"processor {processor.name} {processor.version}: no image in production.processors "
            "(the Kubernetes executor runs images, not local commands)"
        )
    k8s = settings.production.kubernetes
    inputs = pod_inputs(launch, settings)
    labels = job_labels(launch)
    resources = {
        "cpu": cpu_quantity(launch.resources.cpu),
        "memory": mib_quantity(launch.resources.memory_mib),
        "ephemeral-storage": mib_quantity(launch.resources.ephemeral_mib),
    }
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": processor.image,
        "imagePullPolicy": "IfNotPresent",
        "args": [_to_pod_paths(arg, inputs) for arg in launch.args],
        "env": _env(launch, inputs),
        "workingDir": WORK_DIR,
        # Requests equal limits: the Pod is in the Guaranteed QoS class, and a step measured locally with
        # these figures behaves the same on a node.
        "resources": {"requests": resources, "limits": dict(resources)},
        "securityContext": _container_security_context(),
        "volumeMounts": _volume_mounts(launch, settings, inputs),
    }
    if processor.command:
        container["command"] = [PYTHON_IN_IMAGE if part == "{python}" else part for part in processor.command]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security_context(),
        "containers": [container],
        "volumes": _volumes(launch, settings, inputs),
    }
    priority_class = launch.priority_class or _lane_priority_class(settings, launch.lane)
    if priority_class:
        pod_spec["priorityClassName"] = priority_class
    if k8s.image_pull_secret:
        pod_spec["imagePullSecrets"] = [{"name": k8s.image_pull_secret}]
    annotations = {ANNOTATION_EXECUTION: launch.execution_id}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(launch.run_id, launch.step, launch.attempt),
            "namespace": k8s.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": launch.timeout_s,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    }
                ]
            },
            "template": {
                "metadata": {"labels": dict(labels), "annotations": dict(annotations)},
                "spec": pod_spec,
            },
        },
    }


def execution_subpath(run_id: str, step: str, attempt: int) -> str:
    """The execution's directory on the shared work volume, relative to its root (step names are plain
    names: ``pipelines.spec.NAME``)."""
    return f"{run_id}/{step}/{attempt}"


def output_subpath(run_id: str, step: str, attempt: int) -> str:
    """The execution's output directory on the shared work volume (the Pod's ``/work/out``)."""
    return f"{execution_subpath(run_id, step, attempt)}/out"


def pod_inputs(launch: StepLaunch, settings: Settings) -> dict[str, tuple[str, str]]:
    """Each input's control-plane path -> (its subPath on the products claim, its path in the Pod); raises
    ManifestError for an input the Pod cannot be given (no products claim, outside the catalog storage, two
    inputs of the same name)."""
    if not launch.input_paths:
        return {}
    if settings.production.kubernetes.products_claim is None:
        raise ManifestError(
            f"step {launch.step}: {len(launch.input_paths)} input product(s) but "
            "production.kubernetes.products_claim is not set (the Pod cannot see the catalog storage)"
        )
    root = Path(os.path.normpath(settings.products_dir))
    inputs: dict[str, tuple[str, str]] = {}
    in_pod: set[str] = set()
    for local in launch.input_paths:
        path = Path(os.path.normpath(local))
        if path == root or not path.is_relative_to(root):
            raise ManifestError(
                f"step {launch.step}: input {local} is not under production.catalog.storage_dir ({root}), "
                "the root of production.kubernetes.products_claim"
            )
        target = f"{INPUT_DIR}/{path.name}"
        if target in in_pod:
            raise ManifestError(f"step {launch.step}: two inputs named {path.name} (both would be {target})")
        in_pod.add(target)
        inputs[local] = (PurePosixPath(path.relative_to(root)).as_posix(), target)
    return inputs


def _to_pod_paths(text: str, inputs: dict[str, tuple[str, str]]) -> str:
    """``text`` with every input's control-plane path replaced by its path in the Pod (longest first, so a
    path that is a prefix of another one does not cut it)."""
    for local in sorted(inputs, key=len, reverse=True):
        text = text.replace(local, inputs[local][1])
    return text


def _volume_mounts(
    launch: StepLaunch, settings: Settings, inputs: dict[str, tuple[str, str]]
) -> list[dict[str, Any]]:
    shared_out = settings.production.kubernetes.work_claim is not None
    mounts: list[dict[str, Any]] = [
        {"name": WORK_VOLUME, "mountPath": WORK_DIR, "subPath": "work"},
        {"name": WORK_VOLUME, "mountPath": INPUT_DIR, "subPath": "in"},
        {
            "name": OUTPUT_VOLUME if shared_out else WORK_VOLUME,
            "mountPath": OUTPUT_DIR,
            "subPath": output_subpath(launch.run_id, launch.step, launch.attempt) if shared_out else "out",
        },
        {"name": WORK_VOLUME, "mountPath": TMP_DIR, "subPath": "tmp"},
    ]
    mounts.extend(
        {"name": PRODUCTS_VOLUME, "mountPath": target, "subPath": subpath, "readOnly": True}
        for subpath, target in inputs.values()
    )
    return mounts


def _volumes(
    launch: StepLaunch, settings: Settings, inputs: dict[str, tuple[str, str]]
) -> list[dict[str, Any]]:
    """The emptyDir, then the claims the mounts use (a claim mounted nowhere is not asked for)."""
    k8s = settings.production.kubernetes
    volumes: list[dict[str, Any]] = [
        {"name": WORK_VOLUME, "emptyDir": {"sizeLimit": mib_quantity(launch.resources.ephemeral_mib)}}
    ]
    if k8s.work_claim is not None:
        volumes.append({"name": OUTPUT_VOLUME, "persistentVolumeClaim": {"claimName": k8s.work_claim}})
    if inputs:  # pod_inputs refused inputs without a products claim
        volumes.append(
            {
                "name": PRODUCTS_VOLUME,
                "persistentVolumeClaim": {"claimName": k8s.products_claim, "readOnly": True},
            }
        )
    return volumes


def _env(launch: StepLaunch, inputs: dict[str, tuple[str, str]]) -> list[dict[str, str]]:
    """The step's own variables, then refsys's (which win: a chain cannot redirect the output directory)."""
    env = {name: _to_pod_paths(value, inputs) for name, value in launch.env.items()}
    env.update(
        {
            "REFSYS_RUN_ID": launch.run_id,
            "REFSYS_STEP": launch.step,
            "REFSYS_ATTEMPT": str(launch.attempt),
            "REFSYS_INPUT_DIR": INPUT_DIR,
            "REFSYS_OUTPUT_DIR": OUTPUT_DIR,
            # The root filesystem is read-only: tools that write under $HOME or $TMPDIR need a writable one.
            "HOME": TMP_DIR,
            "TMPDIR": TMP_DIR,
        }
    )
    return [{"name": name, "value": value} for name, value in env.items()]


def _pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security_context() -> dict[str, Any]:
    # Repeated at container level: the restricted PSS accepts either level, and a reader (or a policy engine
    # that checks containers only) sees the whole picture in one place.
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _lane_priority_class(settings: Settings, lane: str) -> str | None:
    lane_settings = settings.production.lanes.get(lane)
    return lane_settings.priority_class if lane_settings else None
