"""Kubernetes executor: one batch/v1 Job per step execution, through the official ``kubernetes`` client.

Kubernetes is only where steps run; the engine keeps every run's state in its own database. So the executor
holds nothing it could not rebuild: a Job's name is derived from ``(run_id, step, attempt)`` (``start`` twice
meets the first Job, ``adopt`` after a restart finds it again by name), and its outcome is read from the Job's
conditions.

Status comes from one list + watch of the executor's Jobs (by label selector) in a background thread: the list
gives the current state and a resourceVersion, the watch follows from there. A watch that answers 410 Gone
(its resourceVersion left the API server's window; as an HTTP status or as an ERROR event in the stream) is
answered by listing again. Every ``resync_s`` the thread lists anyway, so a change a watch silently missed is
picked up, and a Job that vanished is reported ``lost``.

Logs: once a Job's Pod is running (or has ended), its container log is followed (``read_namespaced_pod_log``
with ``follow``) in a thread of its own and handed to ``on_log`` line by line. The API merges stdout and
stderr, so the lines come with the stream name ``combined``.

Job clean-up: a Job is created without ``ttlSecondsAfterFinished``, so it stays while its outcome is only in
this process. ``poll`` hands the outcome to the engine, which saves it; then ``ttlSecondsAfterFinished`` is
patched onto the Job, which the TTL controller deletes that many seconds later. A control plane killed between
the two finds the Job again on ``adopt`` (the TTL window is the margin).

Staging (see ``k8s_manifests``): with ``work_claim``/``work_mount`` set, ``start`` creates the execution's
output directory on the shared volume before the Job (mode 2775: group-writable and group-inheriting, so a
Pod running as 65532 writes to it when the control plane runs as that user or the volume's root directory
belongs to group 65532 with the setgid bit), and every result carries it as ``output_dir``. Without them the
result has none, and the engine refuses to publish a step with outputs, naming the two settings.

RBAC the control plane's identity needs in the namespace: ``batch/jobs``: create, get, list, watch, patch,
delete; ``pods``: list; ``pods/log``: get.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from control_plane.core.config import KubernetesExecutorSettings, Settings
from pipelines.executors import k8s_manifests as manifests
from pipelines.executors.base import Executor, LogSink, Outcome, StepLaunch, StepResult

log = logging.getLogger(__name__)

LOG_STREAM = "combined"
"""Stream name of a step's log lines: the Pod log API merges stdout and stderr."""
REQUEST_TIMEOUT_S = 30.0
"""Connect and read timeout of one plain API call (not of watch or log streams)."""
WATCH_READ_GRACE_S = 5.0
"""A watch that has said nothing for its whole ``timeoutSeconds`` plus this is taken as dead and restarted."""
ERROR_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Waits before listing again after consecutive API failures (the last one repeats)."""
REMEMBERED_EXECUTIONS = 10_000
"""Executions known at most (ended ones, oldest first, are forgotten beyond it)."""
OUTPUT_DIR_MODE = 0o2775
"""Mode of an execution's output directory on the shared work volume (see the module docstring)."""
_FINAL_CONDITIONS = ("Complete", "Failed")


class KubernetesExecutorError(RuntimeError):
    """The API refused or failed an executor call; ``str()`` names the Job and the API's answer."""


@dataclass
class _Execution:
    run_id: str
    step: str
    attempt: int
    job: str
    tracked_at: float
    """``time.monotonic()`` when this process started tracking it (a list taken before cannot show it)."""
    ended: bool = False
    """Its result is queued or handed over: later events about the Job and repeated cancels are ignored."""
    cancelling: bool = False
    """``cancel`` is deleting the Job: watch and list leave the execution to it."""
    log_follower: threading.Thread | None = None
    """The thread following its Pods' logs, while one runs."""
    look_again: bool = False
    """A Job event came while the follower ran: it lists the Pods once more before it stops."""
    followed_pods: set[str] = field(default_factory=set)


class KubernetesExecutor(Executor):
    """Runs each step execution as a Job in ``production.kubernetes.namespace``; see the module docstring."""

    name = "kubernetes"

    def __init__(
        self, settings: Settings, on_log: LogSink, api_client: client.ApiClient | None = None
    ) -> None:
        self._settings = settings
        self._config: KubernetesExecutorSettings = settings.production.kubernetes
        self._on_log = on_log
        self._api = api_client or _api_client_from(
            self._config, pool_size=settings.production.max_parallel_steps + 4
        )
        self._batch = client.BatchV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        self._lock = threading.Lock()
        self._executions: dict[str, _Execution] = {}
        self._results: list[StepResult] = []
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None
        self._watch: watch.Watch | None = None
        self._open_logs: set[Any] = set()
        self._ttl_patcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refsys-k8s-ttl")
        self.relists = 0
        """Full lists of Jobs so far (the first one, resyncs, and relists after a 410 or an error)."""

    # -- the Executor interface ------------------------------------------------------------------------------

    def start(self, launch: StepLaunch) -> str:
        """Create the Job; one that already exists (409) is this execution's, started before: it is kept."""
        manifest = manifests.build_job(launch, self._settings)
        name: str = manifest["metadata"]["name"]
        self._make_output_dir(launch)
        try:
            self._batch.create_namespaced_job(
                self._config.namespace,
                cast(client.V1Job, client.V1Job.from_dict(manifest)),
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except ApiException as exc:
            if exc.status != 409:
                raise KubernetesExecutorError(f"creating Job {name}: {_api_error(exc)}") from exc
            log.info("Job %s already exists: execution %s was started before", name, launch.execution_id)
        except urllib3.exceptions.HTTPError as exc:
            raise KubernetesExecutorError(f"creating Job {name}: {exc}") from exc
        self._track(launch.run_id, launch.step, launch.attempt, name)
        return name

    def _make_output_dir(self, launch: StepLaunch) -> None:
        """Create the execution's output directory on the shared work volume (when there is one) before its
        Pod mounts it: a subPath the kubelet had to create would belong to root."""
        output_dir = self._output_dir(launch.run_id, launch.step, launch.attempt)
        if output_dir is None:
            return
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(output_dir, OUTPUT_DIR_MODE)  # exactly, whatever the umask
        except OSError as exc:
            raise KubernetesExecutorError(
                f"creating the output directory of {launch.execution_id} under production.kubernetes.work_mount: "
                f"{exc}"
            ) from exc

    def _output_dir(self, run_id: str, step: str, attempt: int) -> Path | None:
        """Where the control plane sees the execution's ``/work/out``; None without a shared work volume."""
        if self._config.work_mount is None:
            return None
        return self._config.work_mount / manifests.output_subpath(run_id, step, attempt)

    def adopt(self, launch: StepLaunch, ref: str | None) -> bool:
        name = ref or manifests.job_name(launch.run_id, launch.step, launch.attempt)
        try:
            job = self._read_job(name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise KubernetesExecutorError(f"reading Job {name}: {_api_error(exc)}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise KubernetesExecutorError(f"reading Job {name}: {exc}") from exc
        self._track(launch.run_id, launch.step, launch.attempt, name)
        self._observe(job, "ADOPTED")
        return True

    def poll(self) -> list[StepResult]:
        with self._lock:
            results, self._results = self._results, []
            if len(self._executions) > REMEMBERED_EXECUTIONS:
                self._forget_ended()
        for result in results:
            # Cancelled Jobs are deleted already; lost ones are gone.
            if result.outcome in ("succeeded", "failed", "timed-out") and not self._closing.is_set():
                self._ttl_patcher.submit(
                    self._set_ttl, manifests.job_name(result.run_id, result.step, result.attempt)
                )
        return results

    def _forget_ended(self) -> None:
        """Drop the oldest ended executions (kept so that late events and repeated cancels about them are
        no-ops) down to half the limit; the caller holds the lock."""
        ended = [name for name, execution in self._executions.items() if execution.ended]
        for name in ended[: max(0, len(ended) - REMEMBERED_EXECUTIONS // 2)]:
            del self._executions[name]

    def cancel(self, run_id: str, step: str, attempt: int) -> None:
        """Delete the Job (Foreground: its Pods go first) and report ``cancelled``; an execution that has
        already ended keeps its result."""
        name = manifests.job_name(run_id, step, attempt)
        with self._lock:
            execution = self._executions.setdefault(
                name, _Execution(run_id, step, attempt, name, tracked_at=time.monotonic())
            )
            if execution.ended:
                return
            # From now on the Job's deletion is ours: its DELETED event must not make the execution "lost".
            execution.cancelling = True
        try:
            self._batch.delete_namespaced_job(
                name,
                self._config.namespace,
                propagation_policy="Foreground",
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except ApiException as exc:
            if exc.status != 404:
                execution.cancelling = False
                raise KubernetesExecutorError(f"deleting Job {name}: {_api_error(exc)}") from exc
        except urllib3.exceptions.HTTPError as exc:
            execution.cancelling = False
            raise KubernetesExecutorError(f"deleting Job {name}: {exc}") from exc
        self._finish(execution, "cancelled", None, "cancelled: the Job was deleted")

    def close(self) -> None:
        self._closing.set()
        current = self._watch
        if current is not None:
            current.stop()
        for response in list(self._open_logs):
            _shutdown(response)
        if self._watcher is not None:
            self._watcher.join(timeout=REQUEST_TIMEOUT_S)
        self._ttl_patcher.shutdown(wait=True)

    # -- tracking and outcomes -------------------------------------------------------------------------------

    def _track(self, run_id: str, step: str, attempt: int, name: str) -> None:
        with self._lock:
            if name not in self._executions:
                self._executions[name] = _Execution(run_id, step, attempt, name, tracked_at=time.monotonic())
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch_jobs, name="refsys-k8s-watch", daemon=True
                )
                self._watcher.start()

    def _observe(self, job: dict[str, Any], event: str) -> None:
        """Act on one state of a Job: a final condition ends its execution, a running Pod gets its log
        followed, a deletion nobody asked for makes it ``lost``."""
        name = (job.get("metadata") or {}).get("name")
        with self._lock:
            execution = self._executions.get(name) if name else None
        if execution is None or execution.ended or execution.cancelling:
            return
        if event == "DELETED":
            self._finish(execution, "lost", None, "the Job was deleted outside refsys")
            return
        status = job.get("status") or {}
        final = _final_condition(status)
        if final is None:
            if status.get("ready") or status.get("succeeded") or status.get("failed"):
                self._follow_logs(execution)
            return
        self._follow_logs(execution)
        kind, reason, message = final
        if kind == "Complete":
            self._finish(execution, "succeeded", 0, "Complete")
        elif reason == "DeadlineExceeded":
            self._finish(execution, "timed-out", None, _describe(reason, message))
        else:
            exit_code, container_reason = self._container_end(execution.job)
            detail = _describe(reason or "Failed", message)
            if container_reason:
                detail += f"; container {manifests.CONTAINER}: {container_reason}"
            self._finish(execution, "failed", exit_code, detail)

    def _finish(self, execution: _Execution, outcome: Outcome, exit_code: int | None, reason: str) -> None:
        with self._lock:
            if execution.ended:
                return
            execution.ended = True
            self._results.append(
                StepResult(
                    run_id=execution.run_id,
                    step=execution.step,
                    attempt=execution.attempt,
                    outcome=outcome,
                    exit_code=exit_code,
                    reason=reason,
                    output_dir=self._output_dir(execution.run_id, execution.step, execution.attempt),
                )
            )

    def _set_ttl(self, name: str) -> None:
        """Let the TTL controller delete the Job now that its outcome is with the engine."""
        body = {"spec": {"ttlSecondsAfterFinished": self._config.ttl_after_finished_s}}
        try:
            self._batch.patch_namespaced_job(
                name, self._config.namespace, body, _request_timeout=REQUEST_TIMEOUT_S
            )
        except ApiException as exc:
            if exc.status != 404:  # already gone: nothing left to clean up
                log.warning("could not set ttlSecondsAfterFinished on Job %s: %s", name, _api_error(exc))
        except urllib3.exceptions.HTTPError as exc:
            log.warning("could not set ttlSecondsAfterFinished on Job %s: %s", name, exc)

    def _container_end(self, job: str) -> tuple[int | None, str | None]:
        """Exit code and reason (``Error``, ``OOMKilled`` ...) of the step container in the Job's latest Pod;
        (None, None) when no Pod or no terminated state can be read."""
        try:
            pods = self._pods_of(job)
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            log.warning("could not read the Pods of Job %s: %s", job, exc)
            return None, None
        for pod in sorted(
            pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "", reverse=True
        ):
            for container in (pod.get("status") or {}).get("containerStatuses") or []:
                if container.get("name") != manifests.CONTAINER:
                    continue
                terminated = (container.get("state") or {}).get("terminated") or (
                    container.get("lastState") or {}
                ).get("terminated")
                if terminated:
                    code = terminated.get("exitCode")
                    reason = terminated.get("reason") or "terminated"
                    return code, f"{reason} (exit {code})"
        return None, None

    # -- list + watch ----------------------------------------------------------------------------------------

    def _watch_jobs(self) -> None:
        """The status thread: list, watch from the list's resourceVersion until the next resync, again."""
        failures = 0
        gone_in_a_row = 0
        while not self._closing.is_set():
            try:
                resource_version = self._relist()
                self._watch_until_resync(resource_version)
                failures = gone_in_a_row = 0
                continue
            except ApiException as exc:
                if self._closing.is_set():
                    return
                if exc.status == 410:
                    gone_in_a_row += 1
                    log.info("Job watch expired (410 Gone): listing again")
                    if gone_in_a_row == 1:
                        continue  # relist at once; a server answering 410 again and again gets the backoff
                failures += 1
                log.warning("Kubernetes API error while watching Jobs: %s", _api_error(exc))
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if self._closing.is_set():
                    return
                failures += 1
                log.warning("Kubernetes API unreachable while watching Jobs: %s", exc)
            except Exception:  # keep the status thread alive whatever one event did; the next list repairs
                if self._closing.is_set():
                    return
                failures += 1
                log.exception("Job watch failed")
            self._closing.wait(ERROR_BACKOFF_S[min(failures, len(ERROR_BACKOFF_S)) - 1])

    def _relist(self) -> str | None:
        """List the executor's Jobs, act on each, report tracked ones that are gone; the list's
        resourceVersion."""
        listed_at = time.monotonic()
        response: Any = self._batch.list_namespaced_job(  # raw: _preload_content=False
            self._config.namespace,
            label_selector=manifests.SELECTOR,
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_S,
        )
        body = json.loads(response.data)
        self.relists += 1
        present: set[str] = set()
        for job in body.get("items") or []:
            if _managed(job):
                present.add(job["metadata"]["name"])
                self._observe(job, "LISTED")
        with self._lock:
            vanished = [
                execution
                for execution in self._executions.values()
                if not (execution.ended or execution.cancelling)
                and execution.job not in present
                and execution.tracked_at < listed_at
            ]
        for execution in vanished:
            self._finish(execution, "lost", None, "the Job is gone (not in the list of Jobs)")
        resource_version: str | None = (body.get("metadata") or {}).get("resourceVersion")
        return resource_version

    def _watch_until_resync(self, resource_version: str | None) -> None:
        """Follow Job events from ``resource_version`` until ``resync_s`` is up (a 410 raises ApiException)."""
        deadline = time.monotonic() + self._config.resync_s
        while not self._closing.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            stream = watch.Watch(return_type="object")  # raw dicts, as the list gives them
            self._watch = stream
            kwargs: dict[str, Any] = {
                "label_selector": manifests.SELECTOR,
                "allow_watch_bookmarks": True,
                "timeout_seconds": math.ceil(remaining),
                "_request_timeout": (REQUEST_TIMEOUT_S, remaining + WATCH_READ_GRACE_S),
            }
            if resource_version:
                kwargs["resource_version"] = resource_version
            try:
                for event in stream.stream(self._batch.list_namespaced_job, self._config.namespace, **kwargs):
                    job = event["raw_object"]
                    resource_version = (job.get("metadata") or {}).get("resourceVersion") or resource_version
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED") and _managed(job):
                        self._observe(job, event["type"])
                    if self._closing.is_set() or time.monotonic() >= deadline:
                        stream.stop()
            except urllib3.exceptions.ReadTimeoutError:
                pass  # a silent watch: restart it from the same resourceVersion, or resync when it is time
            finally:
                self._watch = None

    def _read_job(self, name: str) -> dict[str, Any]:
        response: Any = self._batch.read_namespaced_job(  # raw: _preload_content=False
            name, self._config.namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        job: dict[str, Any] = json.loads(response.data)
        return job

    def _pods_of(self, job: str) -> list[dict[str, Any]]:
        response: Any = self._core.list_namespaced_pod(  # raw: _preload_content=False
            self._config.namespace,
            label_selector=f"{manifests.JOB_NAME_LABEL}={job}",
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_S,
        )
        items = json.loads(response.data).get("items") or []
        # Checked here too: a selector the server ignored must not hand us another Job's Pods.
        return [pod for pod in items if _pod_job(pod) == job]

    # -- logs ------------------------------------------------------------------------------------------------

    def _follow_logs(self, execution: _Execution) -> None:
        """Make sure every started Pod of the Job has its log followed. Driven by the Job's events (a Pod
        ready, the Job ended, a Pod replaced), not by polling: no API calls while nothing changes."""
        with self._lock:
            if self._closing.is_set():
                return
            if execution.log_follower is not None:
                execution.look_again = True  # the running follower takes one more look before it stops
                return
            execution.look_again = False
            execution.log_follower = threading.Thread(
                target=self._follow, args=(execution,), name=f"refsys-k8s-log-{execution.job}", daemon=True
            )
            execution.log_follower.start()

    def _follow(self, execution: _Execution) -> None:
        """Stream the log of each Pod of the Job that has left Pending and was not followed yet (a disrupted
        Pod is replaced, and the new one is followed too); look again while new events asked for it."""
        while not self._closing.is_set():
            try:
                pods = self._pods_of(execution.job)
            except (ApiException, urllib3.exceptions.HTTPError) as exc:
                log.warning("could not list the Pods of Job %s: %s", execution.job, exc)
                pods = []
            for pod in pods:
                pod_name = pod["metadata"]["name"]
                phase = (pod.get("status") or {}).get("phase", "Pending")
                if pod_name in execution.followed_pods or phase == "Pending":
                    continue
                execution.followed_pods.add(pod_name)
                if not self._stream_log(execution, pod_name):
                    execution.followed_pods.discard(pod_name)  # not readable yet: the next event retries
            with self._lock:
                if not execution.look_again:
                    execution.log_follower = None
                    return
                execution.look_again = False

    def _stream_log(self, execution: _Execution, pod: str) -> bool:
        try:
            response: Any = self._core.read_namespaced_pod_log(  # raw: _preload_content=False
                pod,
                self._config.namespace,
                container=manifests.CONTAINER,
                follow=True,
                _preload_content=False,
            )
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            log.info("log of Pod %s not readable yet: %s", pod, exc)
            return False
        self._open_logs.add(response)
        try:
            for line in _lines(response):
                self._on_log(execution.run_id, execution.step, execution.attempt, LOG_STREAM, line)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if not self._closing.is_set():
                log.warning("log stream of Pod %s broke off: %s", pod, exc)
        finally:
            self._open_logs.discard(response)
            response.release_conn()
        return True


def check_cluster_configuration(settings: KubernetesExecutorSettings) -> None:
    """Load the cluster configuration once, as the executor will (``KubernetesExecutorError`` naming the
    setting when it cannot be), so that ``refsys serve`` refuses to start instead of failing later."""
    _api_client_from(settings, pool_size=1).close()


def _api_client_from(settings: KubernetesExecutorSettings, *, pool_size: int) -> client.ApiClient:
    """An API client from the configured kubeconfig, or from the Pod's service account when none is set."""
    configuration = client.Configuration()
    try:
        if settings.kubeconfig is not None:
            config.load_kube_config(config_file=str(settings.kubeconfig), client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as exc:
        source = f"kubeconfig {settings.kubeconfig}" if settings.kubeconfig else "in-cluster configuration"
        raise KubernetesExecutorError(f"production.kubernetes: cannot load the {source}: {exc}") from exc
    # One connection per followed log and the watch, besides plain calls: more than urllib3's default.
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


def _final_condition(status: dict[str, Any]) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Job's Complete or Failed condition, when one is true."""
    for condition in status.get("conditions") or []:
        if condition.get("type") in _FINAL_CONDITIONS and condition.get("status") == "True":
            return condition["type"], condition.get("reason") or "", condition.get("message") or ""
    return None


def _describe(reason: str, message: str) -> str:
    return f"{reason}: {message}" if message else reason


def _managed(job: dict[str, Any]) -> bool:
    labels = (job.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(manifests.MANAGED_BY) == manifests.MANAGER and job["metadata"].get("name"))


def _pod_job(pod: dict[str, Any]) -> str | None:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    job: str | None = labels.get(manifests.JOB_NAME_LABEL) or labels.get("job-name")
    return job


def _lines(response: Any) -> Iterator[str]:
    """The response body line by line as it arrives; a last line without a newline is not lost."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.decode("utf-8", errors="replace").rstrip("\r")
    if pending:
        yield pending.decode("utf-8", errors="replace").rstrip("\r")


def _shutdown(response: Any) -> None:
    """Unblock a thread reading a stream: shut its socket down (closing it could wait on the reader)."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _api_error(exc: ApiException) -> str:
    """The API's answer in one short line (the Status message when there is one)."""
    message = exc.reason or ""
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(exc.body or "{}").get("message") or message
    return f"{exc.status} {message}"[:256]
