"""The Kubernetes executor's API calls against a Kubernetes API emulator: the **kmock emulator**
(``kmock.KubernetesEmulator`` from PyPI, over real HTTP), which keeps Jobs and Pods in memory and serves
create, get, list, watch, patch and delete like an API server.

What stands in for the rest of Kubernetes: there is no Job controller or kubelet, so each test plays them
through the same API (creates the Job's Pod, patches the Job's status, serves the Pod's log). The watch
failures are kmock reactions on the watch request: a 410 Gone as an ERROR event in the stream and as an HTTP
status (what an API server answers for an expired resourceVersion), and a watch that says nothing until its
``timeoutSeconds`` (to show that the periodic resync finds what the watch missed).

The executor is synchronous (threads, urllib3) while kmock serves from the test's event loop, so every
executor call that talks to the API runs in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import pytest
import pytest_asyncio
from kubernetes import client

from control_plane.core.config import Settings
from pipelines.executors import k8s_manifests as manifests
from pipelines.executors.base import StepLaunch, StepResult
from pipelines.executors.kubernetes import LOG_STREAM, OUTPUT_DIR_MODE, KubernetesExecutor
from pipelines.spec import Resources

NAMESPACE = "refsys-test"
RUN_ID = "0190f3a2-1111-7abc-8def-0123456789ab"
JOBS = kmock.resource("batch/v1/jobs")
PODS = kmock.resource("v1/pods")
WAIT_S = 15.0


class Cluster:
    """What Kubernetes would do besides serving the API (Job controller, kubelet), done through the API."""

    def __init__(self, emulator: kmock.KubernetesEmulator) -> None:
        self.emulator = emulator

    async def run_pod(self, job: str, *, log: bytes = b"", exit_code: int | None = None) -> str:
        """Create the Job's Pod (Running, or terminated with ``exit_code``) and serve ``log`` as its log."""
        pod = f"{job}-x7k2p"
        container: dict[str, Any] = {"name": manifests.CONTAINER, "state": {"running": {}}}
        phase = "Running"
        if exit_code is not None:
            container["state"] = {"terminated": {"exitCode": exit_code, "reason": "Error"}}
            phase = "Failed" if exit_code else "Succeeded"
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod,
                "namespace": NAMESPACE,
                "labels": {manifests.JOB_NAME_LABEL: job, "job-name": job, manifests.MANAGED_BY: "refsys"},
            },
            "spec": {"containers": [{"name": manifests.CONTAINER, "image": "x"}]},
            "status": {"phase": phase, "containerStatuses": [container]},
        }
        self.emulator["get", PODS, kmock.name(pod), kmock.subresource("log")] << (log,)
        await self._call("post", f"/api/v1/namespaces/{NAMESPACE}/pods", body)
        return pod

    async def job_status(self, job: str, status: dict[str, Any]) -> None:
        await self._call(
            "patch", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{job}/status", {"status": status}
        )

    async def complete(self, job: str) -> None:
        await self.job_status(
            job, {"succeeded": 1, "conditions": [condition("Complete", "CompletionsReached")]}
        )

    async def delete(self, job: str) -> None:
        await self._call("delete", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{job}", None)

    async def _call(self, method: str, path: str, body: dict[str, Any] | None) -> None:
        async with self.emulator.request(method.upper(), path, json=body) as response:
            assert response.status == 200, await response.text()

    def requests(self, *criteria: Any) -> list[kmock.Request]:
        return list(self.emulator[criteria])

    def job(self, name: str) -> dict[str, Any]:
        return self.emulator.objects[JOBS, NAMESPACE, name].raw

    def has_job(self, name: str) -> bool:
        key = (JOBS, NAMESPACE, name)
        return key in self.emulator.objects and not self.emulator.objects[key].deleted


def condition(kind: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": kind, "status": "True", "reason": reason, "message": message}


class Lines:
    """The executor's log sink: every line, in order, from whichever thread."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, int, str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, run_id: str, step: str, attempt: int, stream: str, line: str) -> None:
        with self._lock:
            self.lines.append((run_id, step, attempt, stream, line))


async def eventually(check: Callable[[], Any], what: str) -> Any:
    """Poll ``check`` (on the event loop, so kmock keeps serving) until it returns something truthy."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Results:
    """Everything ``poll`` handed over so far (each result must come exactly once)."""

    def __init__(self, executor: KubernetesExecutor) -> None:
        self.executor = executor
        self.seen: list[StepResult] = []

    def poll(self) -> list[StepResult]:
        self.seen.extend(self.executor.poll())
        return self.seen

    async def first(self) -> StepResult:
        results = await eventually(self.poll, "a step result")
        return results[0]


def settings(tmp_path: Path, **kubernetes: Any) -> Settings:
    return Settings(
        data_dir=tmp_path,
        production={"kubernetes": {"namespace": NAMESPACE, "resync_s": 300.0, **kubernetes}},
    )


def launch(
    tmp_path: Path, *, step: str = "decode", attempt: int = 1, input_paths: list[str] | None = None
) -> StepLaunch:
    config = settings(tmp_path)
    return StepLaunch(
        run_id=RUN_ID,
        step=step,
        attempt=attempt,
        chain_id="s1-l0",
        chain_version="1.0",
        lane="NRT",
        priority_class="refsys-nrt",
        processor=config.production.processors[0],
        args=["--product", "S1A_IW_RAW__0SDV"],
        env={},
        resources=Resources(),
        timeout_s=600,
        input_paths=input_paths or [],
    )


async def started(
    make_executor: Any, tmp_path: Path, **kubernetes: Any
) -> tuple[KubernetesExecutor, Lines, Results, str]:
    """A new executor, what it reports, and the name of the Job it created for the decode step."""
    executor, lines = make_executor(**kubernetes)
    results = Results(executor)
    name = await asyncio.to_thread(executor.start, launch(tmp_path))
    return executor, lines, results, name


async def watching(cluster: Cluster) -> None:
    await eventually(lambda: cluster.requests(kmock.action.WATCH, JOBS), "the Job watch")


@pytest_asyncio.fixture
async def cluster(kmock: kmock.KubernetesEmulator) -> Cluster:
    kmock.resources["batch/v1/jobs"] = kmock.ResourceInfo(
        namespaced=True, kind="Job", subresources={"status"}
    )
    kmock.resources["v1/pods"] = kmock.ResourceInfo(namespaced=True, kind="Pod", subresources={"log"})
    return Cluster(kmock)


@pytest_asyncio.fixture
async def make_executor(
    kmock: kmock.KubernetesEmulator, tmp_path: Path
) -> AsyncIterator[Callable[..., tuple[KubernetesExecutor, Lines]]]:
    """Executors talking to the emulator over HTTP (several: a restarted control plane is a new one)."""
    made: list[KubernetesExecutor] = []

    def make(**kubernetes: Any) -> tuple[KubernetesExecutor, Lines]:
        api = client.ApiClient(client.Configuration(host=str(kmock.url).rstrip("/")))
        lines = Lines()
        executor = KubernetesExecutor(settings(tmp_path, **kubernetes), lines, api_client=api)
        made.append(executor)
        return executor, lines

    yield make
    for executor in made:
        await asyncio.to_thread(executor.close)


@pytest.mark.asyncio
async def test_start_creates_the_job_once(cluster: Cluster, make_executor: Any, tmp_path: Path) -> None:
    executor, _ = make_executor()
    step = launch(tmp_path)
    name = await asyncio.to_thread(executor.start, step)
    assert name == manifests.job_name(RUN_ID, "decode", 1)
    assert cluster.job(name) == manifests.build_job(step, settings(tmp_path))

    # A control plane that crashed after creating the Job but before saving its name starts it again.
    assert await asyncio.to_thread(executor.start, step) == name
    assert len(cluster.requests(kmock.action.CREATE, JOBS)) == 2  # the second answered 409 AlreadyExists
    assert [key for key in cluster.emulator.objects if key[0] == JOBS] == [(JOBS, NAMESPACE, name)]


@pytest.mark.asyncio
async def test_watch_reports_success_and_streams_the_log(
    cluster: Cluster, make_executor: Any, tmp_path: Path
) -> None:
    _, lines, results, name = await started(make_executor, tmp_path)
    await watching(cluster)

    await cluster.run_pod(name, log=b"reading S1A_IW_RAW__0SDV\r\nwrote 3 files\nno newline at the end")
    await cluster.job_status(name, {"active": 1, "ready": 1})
    expected = ["reading S1A_IW_RAW__0SDV", "wrote 3 files", "no newline at the end"]
    await eventually(lambda: len(lines.lines) == 3, "the Pod's log lines")
    assert lines.lines == [(RUN_ID, "decode", 1, LOG_STREAM, line) for line in expected]
    log_request = cluster.requests(kmock.action.FETCH, PODS, kmock.subresource("log"))[0]
    assert log_request.params["follow"] == "true" and log_request.params["container"] == "step"
    assert results.poll() == []

    await cluster.complete(name)
    result = await results.first()
    assert (result.outcome, result.exit_code, result.reason) == ("succeeded", 0, "Complete")
    assert result.output_dir is None  # no shared work volume configured: nothing to publish from

    # Once handed over, the Job gets its TTL (and not before).
    patched = await eventually(lambda: cluster.job(name)["spec"].get("ttlSecondsAfterFinished"), "the TTL")
    assert patched == 600
    assert len(results.poll()) == 1
    assert len(lines.lines) == 3  # the log was followed once


@pytest.mark.asyncio
async def test_failed_job_reports_the_container_exit_code(
    cluster: Cluster, make_executor: Any, tmp_path: Path
) -> None:
    _, _, results, name = await started(make_executor, tmp_path)
    await cluster.run_pod(name, log=b"decoder: checksum mismatch\n", exit_code=3)
    await cluster.job_status(
        name,
        {
            "failed": 1,
            "conditions": [
                condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            ],
        },
    )
    result = await results.first()
    assert result.outcome == "failed"
    assert result.exit_code == 3
    assert result.reason == (
        "BackoffLimitExceeded: Job has reached the specified backoff limit; container step: Error (exit 3)"
    )


@pytest.mark.asyncio
async def test_deadline_exceeded_is_timed_out(cluster: Cluster, make_executor: Any, tmp_path: Path) -> None:
    _, _, results, name = await started(make_executor, tmp_path)
    failed = condition("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
    await cluster.job_status(name, {"failed": 1, "conditions": [failed]})
    result = await results.first()
    assert (result.outcome, result.exit_code) == ("timed-out", None)
    assert result.reason.startswith("DeadlineExceeded")


GONE = {
    "apiVersion": "v1",
    "kind": "Status",
    "status": "Failure",
    "code": 410,
    "reason": "Expired",
    "message": "too old resource version: 1000 (2000)",
}


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["ERROR event in the watch stream", "HTTP 410 answer to the watch"])
async def test_410_gone_on_watch_relists_then_watches_again(
    cluster: Cluster, make_executor: Any, tmp_path: Path, how: str
) -> None:
    first_watch = cluster.emulator[kmock.action.WATCH, JOBS][:1]
    if how.startswith("ERROR"):
        first_watch << ({"type": "ERROR", "object": GONE},)
    else:
        first_watch << 410 << GONE
    executor, _, results, name = await started(make_executor, tmp_path)

    await eventually(lambda: len(cluster.requests(kmock.action.WATCH, JOBS)) == 2, "a second watch")
    calls = [request.action for request in cluster.requests(JOBS) if request.action != kmock.action.CREATE]
    assert calls[:4] == [kmock.action.LIST, kmock.action.WATCH, kmock.action.LIST, kmock.action.WATCH]
    assert executor.relists == 2

    await cluster.complete(name)  # seen by the new watch
    assert (await results.first()).outcome == "succeeded"
    assert executor.relists == 2


@pytest.mark.asyncio
@pytest.mark.parametrize(("change", "outcome"), [("complete", "succeeded"), ("delete", "lost")])
async def test_periodic_resync_finds_what_a_silent_watch_missed(
    cluster: Cluster, make_executor: Any, tmp_path: Path, change: str, outcome: str
) -> None:
    # A watch that delivers nothing and ends at its timeoutSeconds, as an API server ends it.
    cluster.emulator[kmock.action.WATCH, JOBS] << (
        b"",
        lambda request: asyncio.sleep(float(request.params["timeoutSeconds"])),
    )
    executor, _, results, name = await started(make_executor, tmp_path, resync_s=0.5)
    await eventually(lambda: executor.relists >= 1, "the first list")
    await getattr(cluster, change)(name)
    assert (await results.first()).outcome == outcome
    assert executor.relists >= 2
    assert all(
        request.params["timeoutSeconds"] == "1" for request in cluster.requests(kmock.action.WATCH, JOBS)
    )


@pytest.mark.asyncio
async def test_a_job_deleted_behind_refsys_is_lost(
    cluster: Cluster, make_executor: Any, tmp_path: Path
) -> None:
    _, _, results, name = await started(make_executor, tmp_path)
    await watching(cluster)
    await cluster.delete(name)
    result = await results.first()
    assert (result.outcome, result.exit_code) == ("lost", None)


@pytest.mark.asyncio
async def test_cancel_deletes_the_job_in_the_foreground(
    cluster: Cluster, make_executor: Any, tmp_path: Path
) -> None:
    executor, _, results, name = await started(make_executor, tmp_path)
    await watching(cluster)

    await asyncio.to_thread(executor.cancel, RUN_ID, "decode", 1)
    deletes = cluster.requests(kmock.action.DELETE, JOBS, kmock.name(name))
    assert [request.params.get("propagationPolicy") for request in deletes] == ["Foreground"]
    assert not cluster.has_job(name)
    result = await results.first()
    assert (result.outcome, result.exit_code) == ("cancelled", None)
    await asyncio.to_thread(executor.cancel, RUN_ID, "decode", 1)  # a repeated cancel changes nothing

    # The watch's DELETED event for the cancelled Job is not a second result ("lost"): the watch stream is
    # ordered, so once a later Job's completion has come through, that event has been seen and ignored.
    later = await asyncio.to_thread(executor.start, launch(tmp_path, attempt=2))
    await cluster.complete(later)
    await eventually(lambda: len(results.poll()) == 2, "the second execution's result")
    assert [(r.attempt, r.outcome) for r in results.seen] == [(1, "cancelled"), (2, "succeeded")]
    assert len(cluster.requests(kmock.action.DELETE, JOBS)) == 1
    assert cluster.requests(kmock.action.UPDATE, JOBS, kmock.name(name)) == []  # no TTL on a deleted Job


@pytest.mark.asyncio
async def test_a_restarted_control_plane_adopts_jobs_by_name(
    cluster: Cluster, make_executor: Any, tmp_path: Path
) -> None:
    before, _ = make_executor()
    step = launch(tmp_path)
    name = await asyncio.to_thread(before.start, step)
    await asyncio.to_thread(before.close)
    await cluster.complete(name)  # the Job ended while no control plane was watching

    after, _ = make_executor()
    results = Results(after)
    assert await asyncio.to_thread(after.adopt, step, None) is True
    result = await results.first()
    assert (result.run_id, result.step, result.attempt, result.outcome) == (RUN_ID, "decode", 1, "succeeded")
    assert await asyncio.to_thread(after.adopt, launch(tmp_path, attempt=2), None) is False


@pytest.mark.asyncio
async def test_shared_work_volume_hands_over_the_output_directory(
    cluster: Cluster, make_executor: Any, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    staging = {"work_claim": "refsys-work", "work_mount": str(shared), "products_claim": "refsys-products"}
    executor, _ = make_executor(**staging)
    results = Results(executor)
    raw = tmp_path / "products" / "S1" / "RAW" / "S1A_IW_RAW__0SDV.SAFE.zip"
    name = await asyncio.to_thread(executor.start, launch(tmp_path, input_paths=[str(raw)]))

    # The output directory exists before the Pod mounts it, writable by the Pod's group.
    output_dir = shared / RUN_ID / "decode" / "1" / "out"
    assert output_dir.is_dir()
    assert output_dir.stat().st_mode & 0o7777 == OUTPUT_DIR_MODE
    pod = cluster.job(name)["spec"]["template"]["spec"]
    claims = {volume["name"]: volume.get("persistentVolumeClaim") for volume in pod["volumes"]}
    assert claims[manifests.OUTPUT_VOLUME] == {"claimName": "refsys-work"}
    assert claims[manifests.PRODUCTS_VOLUME] == {"claimName": "refsys-products", "readOnly": True}
    mounts = {mount["mountPath"]: mount for mount in pod["containers"][0]["volumeMounts"]}
    assert mounts["/work/out"]["subPath"] == f"{RUN_ID}/decode/1/out"
    assert mounts["/work/in/S1A_IW_RAW__0SDV.SAFE.zip"]["subPath"] == "S1/RAW/S1A_IW_RAW__0SDV.SAFE.zip"

    # What the Pod wrote to /work/out is where the engine publishes from.
    (output_dir / "S1A_IW_SLC__1SDV.SAFE.zip").write_bytes(b"slc")
    await cluster.complete(name)
    result = await results.first()
    assert (result.outcome, result.output_dir) == ("succeeded", output_dir)
    assert (result.output_dir / "S1A_IW_SLC__1SDV.SAFE.zip").read_bytes() == b"slc"

    # After a restart, an adopted execution's result carries it too (it is derived, not remembered).
    retry = await asyncio.to_thread(executor.start, launch(tmp_path, attempt=2))
    await asyncio.to_thread(executor.close)
    await cluster.complete(retry)
    after, _ = make_executor(**staging)
    assert await asyncio.to_thread(after.adopt, launch(tmp_path, attempt=2), None) is True
    adopted = await Results(after).first()
    assert adopted.output_dir == shared / RUN_ID / "decode" / "2" / "out"


@pytest.mark.asyncio
async def test_inputs_the_pod_cannot_see_fail_the_start_before_any_job(
    cluster: Cluster, make_executor: Any, tmp_path: Path
) -> None:
    executor, _ = make_executor()  # no products_claim
    step = launch(tmp_path, input_paths=[str(tmp_path / "products" / "S1" / "a.zip")])
    with pytest.raises(manifests.ManifestError, match=r"production\.kubernetes\.products_claim is not set"):
        await asyncio.to_thread(executor.start, step)
    assert cluster.requests(kmock.action.CREATE, JOBS) == []
