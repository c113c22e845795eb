"""The Job manifests of the Kubernetes executor, offline: schema validation with ``kubernetes-validate
--strict`` against Kubernetes 1.30 and 1.33, the restricted Pod Security Standard field by field, names,
labels, resources and the Job's own settings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate
from pydantic import ValidationError

from control_plane.core.config import ProcessorSettings, Settings
from pipelines.executors import k8s_manifests as manifests
from pipelines.executors.base import StepLaunch
from pipelines.spec import Resources

KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")
"""Schema versions kubernetes-validate ships (``kubernetes-json-schema/v1.30.0-local-strict`` ...)."""
RUN_ID = "0190f3a2-1111-7abc-8def-0123456789ab"
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def settings(tmp_path: Path, **kubernetes: Any) -> Settings:
    return Settings(data_dir=tmp_path, production={"kubernetes": kubernetes} if kubernetes else {})


def launch(settings: Settings, **overrides: Any) -> StepLaunch:
    fields: dict[str, Any] = {
        "run_id": RUN_ID,
        "step": "decode",
        "attempt": 1,
        "chain_id": "s1-l0",
        "chain_version": "1.0",
        "lane": "NRT",
        "priority_class": None,
        "processor": settings.production.processors[0],
        "args": ["--product", "S1A_S1_RAW__0SDV.SAFE"],
        "env": {"LEVEL": "debug"},
        "resources": Resources(cpu=1.5, memory_mib=512, ephemeral_mib=2048),
        "timeout_s": 900,
    }
    fields.update(overrides)
    return StepLaunch(**fields)


def job(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    config = settings(tmp_path)
    return manifests.build_job(launch(config, **overrides), config)


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    containers = manifest["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]


def staged_settings(tmp_path: Path) -> Settings:
    """Shared volumes configured: outputs on the work claim, inputs from the catalog's claim."""
    return settings(
        tmp_path,
        work_claim="refsys-work",
        work_mount=str(tmp_path / "shared"),
        products_claim="refsys-products",
    )


def staged_job(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    config = staged_settings(tmp_path)
    products = config.products_dir
    fields: dict[str, Any] = {
        "input_paths": [
            str(products / "S1" / "RAW" / "S1A_IW_RAW__0SDV.SAFE.zip"),
            str(products / "AUX" / "S1A_AUX_CAL_V20190228"),  # a product directory
        ]
    }
    fields.update(overrides)
    return manifests.build_job(launch(config, **fields), config)


def variants(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Manifests that differ where the schema could object: optional fields present or absent."""
    with_secret = settings(tmp_path, image_pull_secret="registry-credentials", namespace="eo-prod")
    entrypoint_only = ProcessorSettings(
        name="l2", version="2.1", image="registry.example/l2@sha256:" + "a" * 64
    )
    return {
        "default": job(tmp_path),
        "pull-secret": manifests.build_job(launch(with_secret), with_secret),
        "image-entrypoint": job(tmp_path, processor=entrypoint_only, args=[], env={}),
        "long-step-name": job(tmp_path, step="a_very.long_step-name" * 3, attempt=12),
        "reprocessing-lane": job(tmp_path, lane="REPROCESSING", resources=Resources(cpu=0.0001)),
        "shared-volumes": staged_job(tmp_path),
        "shared-volumes-no-inputs": staged_job(tmp_path, input_paths=[]),
    }


def test_kubernetes_validate_ships_the_schema_versions_tested() -> None:
    shipped = kubernetes_validate.all_versions()
    for version in KUBERNETES_VERSIONS:
        assert version in shipped


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_pass_kubernetes_validate_strict(tmp_path: Path, version: str) -> None:
    """The kubernetes-validate CLI, as an operator would run it, on every variant written as a YAML file."""
    files = []
    for name, manifest in variants(tmp_path).items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        files.append(str(path))
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed for resource job/") == len(files), result.stdout
    assert f"against version {version.rsplit('.', 1)[0]}" in result.stdout


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_strict_validation_would_catch_an_unknown_field(tmp_path: Path, version: str) -> None:
    """The control for the test above: the same validator refuses a misspelt field, so passing means something."""
    manifest = job(tmp_path)
    container(manifest)["securityContext"]["readOnlyRootFileSystem"] = True  # wrong case: not a field
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(manifest, version, strict=True)


# -- the restricted Pod Security Standard, one control at a time ------------------------------------------------
# https://kubernetes.io/docs/concepts/security/pod-security-standards/ (restricted profile, plus baseline's).


def _pod_and_containers(manifest: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    spec = pod_spec(manifest)
    return spec, spec["containers"] + spec.get("initContainers", []) + spec.get("ephemeralContainers", [])


def check_run_as_non_root(manifest: dict[str, Any]) -> None:
    spec, containers = _pod_and_containers(manifest)
    assert spec["securityContext"]["runAsNonRoot"] is True
    for each in containers:
        assert each["securityContext"].get("runAsNonRoot", True) is True


def check_run_as_user_non_zero(manifest: dict[str, Any]) -> None:
    spec, containers = _pod_and_containers(manifest)
    assert spec["securityContext"]["runAsUser"] > 0
    for each in containers:
        assert each["securityContext"].get("runAsUser", 1) > 0


def check_seccomp_runtime_default(manifest: dict[str, Any]) -> None:
    spec, containers = _pod_and_containers(manifest)
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for each in containers:
        assert each["securityContext"].get("seccompProfile", {"type": "RuntimeDefault"}) == {
            "type": "RuntimeDefault"
        }


def check_capabilities_drop_all(manifest: dict[str, Any]) -> None:
    for each in _pod_and_containers(manifest)[1]:
        capabilities = each["securityContext"]["capabilities"]
        assert capabilities["drop"] == ["ALL"]
        assert capabilities.get("add", []) == []


def check_no_privilege_escalation(manifest: dict[str, Any]) -> None:
    for each in _pod_and_containers(manifest)[1]:
        assert each["securityContext"]["allowPrivilegeEscalation"] is False


def check_not_privileged(manifest: dict[str, Any]) -> None:
    for each in _pod_and_containers(manifest)[1]:
        assert each["securityContext"].get("privileged", False) is False


def check_read_only_root_filesystem(manifest: dict[str, Any]) -> None:
    for each in _pod_and_containers(manifest)[1]:
        assert each["securityContext"]["readOnlyRootFilesystem"] is True


def check_writable_places_are_the_emptydir(manifest: dict[str, Any]) -> None:
    spec = pod_spec(manifest)
    step = container(manifest)
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert list(volumes) == [manifests.WORK_VOLUME]
    assert volumes[manifests.WORK_VOLUME]["emptyDir"]["sizeLimit"] == "2048Mi"
    mounts = {mount["mountPath"]: mount for mount in step["volumeMounts"]}
    assert step["workingDir"] == manifests.WORK_DIR
    for path in (manifests.WORK_DIR, "/tmp", manifests.INPUT_DIR, manifests.OUTPUT_DIR):
        assert mounts[path]["name"] == manifests.WORK_VOLUME
        assert not mounts[path].get("readOnly", False)


def check_volume_types_allowed(manifest: dict[str, Any]) -> None:
    allowed = {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
    }
    allowed |= {"secret"}
    for volume in pod_spec(manifest)["volumes"]:
        assert set(volume) - {"name"} <= allowed


def check_no_host_namespaces_or_ports(manifest: dict[str, Any]) -> None:
    spec, containers = _pod_and_containers(manifest)
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(field, False)
    for each in containers:
        assert all("hostPort" not in port for port in each.get("ports", []))


def check_no_service_account_token(manifest: dict[str, Any]) -> None:
    assert pod_spec(manifest)["automountServiceAccountToken"] is False


RESTRICTED_CONTROLS = {
    "runAsNonRoot": check_run_as_non_root,
    "runAsUser non-zero": check_run_as_user_non_zero,
    "seccompProfile RuntimeDefault": check_seccomp_runtime_default,
    "capabilities drop ALL": check_capabilities_drop_all,
    "allowPrivilegeEscalation false": check_no_privilege_escalation,
    "privileged false": check_not_privileged,
    "readOnlyRootFilesystem": check_read_only_root_filesystem,
    "emptyDir work volume (workdir, /tmp)": check_writable_places_are_the_emptydir,
    "volume types": check_volume_types_allowed,
    "no host namespaces or ports": check_no_host_namespaces_or_ports,
    "automountServiceAccountToken false": check_no_service_account_token,
}


@pytest.mark.parametrize("control", list(RESTRICTED_CONTROLS))
def test_restricted_pod_security_standard(tmp_path: Path, control: str) -> None:
    RESTRICTED_CONTROLS[control](job(tmp_path))


@pytest.mark.parametrize("control", [name for name in RESTRICTED_CONTROLS if not name.startswith("emptyDir")])
def test_restricted_pod_security_standard_with_shared_volumes(tmp_path: Path, control: str) -> None:
    RESTRICTED_CONTROLS[control](staged_job(tmp_path))


@pytest.mark.parametrize(
    ("control", "break_it"),
    [
        ("runAsNonRoot", lambda m: pod_spec(m)["securityContext"].update(runAsNonRoot=False)),
        ("runAsUser non-zero", lambda m: container(m)["securityContext"].update(runAsUser=0)),
        ("seccompProfile RuntimeDefault", lambda m: pod_spec(m)["securityContext"].pop("seccompProfile")),
        (
            "capabilities drop ALL",
            lambda m: container(m)["securityContext"]["capabilities"].update(add=["NET_RAW"]),
        ),
        (
            "allowPrivilegeEscalation false",
            lambda m: container(m)["securityContext"].pop("allowPrivilegeEscalation"),
        ),
        (
            "readOnlyRootFilesystem",
            lambda m: container(m)["securityContext"].update(readOnlyRootFilesystem=False),
        ),
        ("volume types", lambda m: pod_spec(m)["volumes"].append({"name": "h", "hostPath": {"path": "/"}})),
        ("no host namespaces or ports", lambda m: pod_spec(m).update(hostPID=True)),
        ("automountServiceAccountToken false", lambda m: pod_spec(m).pop("automountServiceAccountToken")),
    ],
)
def test_each_control_check_fails_on_a_pod_that_breaks_it(
    tmp_path: Path, control: str, break_it: Any
) -> None:
    """The checks above are not vacuous: each one refuses a manifest with its own field broken."""
    manifest = job(tmp_path)
    break_it(manifest)
    with pytest.raises((AssertionError, KeyError)):
        RESTRICTED_CONTROLS[control](manifest)


# -- names and labels ------------------------------------------------------------------------------------------


def test_job_name_is_deterministic_dns_1123_and_unique_per_execution() -> None:
    name = manifests.job_name(RUN_ID, "decode", 1)
    assert name == manifests.job_name(RUN_ID, "decode", 1)
    assert name.startswith("refsys-decode-1-")
    assert DNS_1123_LABEL.match(name)
    others = {
        manifests.job_name(RUN_ID, "decode", 2),
        manifests.job_name(RUN_ID, "Decode", 1),
        manifests.job_name(RUN_ID.replace("1111", "2222"), "decode", 1),
    }
    assert name not in others
    assert len(others) == 3


@pytest.mark.parametrize("step", ["x" * 63, "l1_calibrate.swath", "-.-_", "Ünïcode step", "a" * 200])
def test_job_name_fits_a_label_whatever_the_step(step: str) -> None:
    name = manifests.job_name(RUN_ID, step, 123)
    assert len(name) <= 63
    assert DNS_1123_LABEL.match(name), name


def test_labels_carry_the_execution_and_are_valid_label_values(tmp_path: Path) -> None:
    manifest = job(tmp_path, step="calibrate.iw_" + "x" * 70, attempt=3)
    labels = manifest["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "refsys"
    assert labels["refsys.io/run-id"] == RUN_ID
    assert labels["refsys.io/step"].startswith("calibrate.iw_x")
    assert labels["refsys.io/attempt"] == "3"
    assert labels["refsys.io/chain"] == "s1-l0"
    assert labels["refsys.io/lane"] == "NRT"
    for value in labels.values():
        assert len(value) <= 63 and LABEL_VALUE.match(value), value
    assert manifest["spec"]["template"]["metadata"]["labels"] == labels
    exact = f"{RUN_ID}/calibrate.iw_{'x' * 70}/3"
    assert manifest["metadata"]["annotations"]["refsys.io/execution"] == exact


# -- the Job's settings ----------------------------------------------------------------------------------------


def test_the_engine_retries_not_the_job(tmp_path: Path) -> None:
    spec = job(tmp_path)["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["completions"] == spec["parallelism"] == 1
    assert spec["podFailurePolicy"] == {
        "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
    }
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_timeout_becomes_the_active_deadline_and_ttl_waits_for_the_outcome(tmp_path: Path) -> None:
    spec = job(tmp_path, timeout_s=1234)["spec"]
    assert spec["activeDeadlineSeconds"] == 1234
    assert "ttlSecondsAfterFinished" not in spec  # patched on once the engine has the outcome


def test_requests_equal_limits_from_the_step_resources(tmp_path: Path) -> None:
    resources = container(job(tmp_path))["resources"]
    expected = {"cpu": "1500m", "memory": "512Mi", "ephemeral-storage": "2048Mi"}
    assert resources == {"requests": expected, "limits": expected}
    tiny = container(job(tmp_path, resources=Resources(cpu=0.0001)))["resources"]
    assert tiny["requests"]["cpu"] == "1m"


def test_priority_class_from_the_launch_else_from_the_lane(tmp_path: Path) -> None:
    assert pod_spec(job(tmp_path, priority_class="custom"))["priorityClassName"] == "custom"
    assert pod_spec(job(tmp_path, lane="REPROCESSING"))["priorityClassName"] == "refsys-reprocessing"
    assert "priorityClassName" not in pod_spec(job(tmp_path, lane="no-such-lane"))


def test_namespace_image_command_and_pull_secret_from_configuration(tmp_path: Path) -> None:
    config = settings(tmp_path, namespace="eo-prod", image_pull_secret="registry-credentials")
    manifest = manifests.build_job(launch(config), config)
    assert manifest["metadata"]["namespace"] == "eo-prod"
    assert pod_spec(manifest)["imagePullSecrets"] == [{"name": "registry-credentials"}]
    step = container(manifest)
    assert step["image"] == "ghcr.io/refsys/processor-s1-l0:1.0"
    assert step["command"] == ["python3", "-m", "pipelines.processors.s1_l0"]
    assert step["args"] == ["--product", "S1A_S1_RAW__0SDV.SAFE"]
    assert "imagePullSecrets" not in pod_spec(job(tmp_path))


def test_environment_names_the_execution_and_its_directories(tmp_path: Path) -> None:
    env = {
        item["name"]: item["value"]
        for item in container(job(tmp_path, env={"LEVEL": "debug", "REFSYS_OUTPUT_DIR": "/etc"}))["env"]
    }
    assert env["LEVEL"] == "debug"
    assert env["REFSYS_RUN_ID"] == RUN_ID
    assert env["REFSYS_STEP"] == "decode"
    assert env["REFSYS_ATTEMPT"] == "1"
    assert env["REFSYS_INPUT_DIR"] == "/work/in"
    assert env["REFSYS_OUTPUT_DIR"] == "/work/out"  # a chain's env cannot redirect it


def test_a_processor_without_image_is_refused_by_name(tmp_path: Path) -> None:
    local_only = ProcessorSettings(name="legacy-ipf", version="3.2", command=["/opt/ipf/run"])
    with pytest.raises(manifests.ManifestError, match=r"processor legacy-ipf 3\.2: no image"):
        job(tmp_path, processor=local_only)


# -- staging through shared volumes ----------------------------------------------------------------------------


def test_no_claims_configured_no_claims_mounted(tmp_path: Path) -> None:
    manifest = job(tmp_path)
    assert [volume["name"] for volume in pod_spec(manifest)["volumes"]] == [manifests.WORK_VOLUME]
    mounts = {mount["mountPath"]: mount for mount in container(manifest)["volumeMounts"]}
    assert mounts[manifests.OUTPUT_DIR] == {
        "name": manifests.WORK_VOLUME,
        "mountPath": "/work/out",
        "subPath": "out",
    }


def test_outputs_go_to_the_execution_directory_on_the_work_claim(tmp_path: Path) -> None:
    manifest = staged_job(tmp_path, input_paths=[], attempt=2)
    volumes = {volume["name"]: volume for volume in pod_spec(manifest)["volumes"]}
    assert volumes[manifests.OUTPUT_VOLUME] == {
        "name": manifests.OUTPUT_VOLUME,
        "persistentVolumeClaim": {"claimName": "refsys-work"},
    }
    assert manifests.PRODUCTS_VOLUME not in volumes  # no inputs: the catalog is not mounted at all
    mounts = {mount["mountPath"]: mount for mount in container(manifest)["volumeMounts"]}
    assert mounts["/work/out"] == {
        "name": manifests.OUTPUT_VOLUME,
        "mountPath": "/work/out",
        "subPath": f"{RUN_ID}/decode/2/out",
    }
    assert manifests.output_subpath(RUN_ID, "decode", 2) == f"{RUN_ID}/decode/2/out"
    # Scratch stays on the Pod's own size-limited emptyDir.
    for path in (manifests.WORK_DIR, manifests.INPUT_DIR, "/tmp"):
        assert mounts[path]["name"] == manifests.WORK_VOLUME
    env = {item["name"]: item["value"] for item in container(manifest)["env"]}
    assert env["REFSYS_OUTPUT_DIR"] == "/work/out"


def test_each_input_is_mounted_read_only_from_the_products_claim(tmp_path: Path) -> None:
    manifest = staged_job(tmp_path)
    volumes = {volume["name"]: volume for volume in pod_spec(manifest)["volumes"]}
    assert volumes[manifests.PRODUCTS_VOLUME]["persistentVolumeClaim"] == {
        "claimName": "refsys-products",
        "readOnly": True,
    }
    inputs = [
        mount for mount in container(manifest)["volumeMounts"] if mount["name"] == manifests.PRODUCTS_VOLUME
    ]
    assert inputs == [
        {
            "name": manifests.PRODUCTS_VOLUME,
            "mountPath": "/work/in/S1A_IW_RAW__0SDV.SAFE.zip",
            "subPath": "S1/RAW/S1A_IW_RAW__0SDV.SAFE.zip",
            "readOnly": True,
        },
        {
            "name": manifests.PRODUCTS_VOLUME,
            "mountPath": "/work/in/S1A_AUX_CAL_V20190228",
            "subPath": "AUX/S1A_AUX_CAL_V20190228",
            "readOnly": True,
        },
    ]
    env = {item["name"]: item["value"] for item in container(manifest)["env"]}
    assert env["REFSYS_INPUT_DIR"] == "/work/in"  # processors list it: the inputs are its entries


def test_arguments_and_environment_name_inputs_by_their_path_in_the_pod(tmp_path: Path) -> None:
    products = staged_settings(tmp_path).products_dir
    raw, raw_sig = str(products / "S1" / "a.zip"), str(products / "S1" / "a.zip.sig")
    manifest = staged_job(
        tmp_path,
        input_paths=[raw, raw_sig],
        args=["--in", raw, raw_sig, f"--all={raw},{raw_sig}", "--keep", "/elsewhere/a.zip"],
        env={"INPUTS": f"{raw},{raw_sig}"},
    )
    step = container(manifest)
    assert step["args"] == [
        "--in",
        "/work/in/a.zip",
        "/work/in/a.zip.sig",
        "--all=/work/in/a.zip,/work/in/a.zip.sig",
        "--keep",
        "/elsewhere/a.zip",
    ]
    env = {item["name"]: item["value"] for item in step["env"]}
    assert env["INPUTS"] == "/work/in/a.zip,/work/in/a.zip.sig"


def test_inputs_without_a_products_claim_are_refused_naming_the_setting(tmp_path: Path) -> None:
    config = settings(tmp_path, work_claim="refsys-work", work_mount=str(tmp_path / "shared"))
    step = launch(config, input_paths=[str(config.products_dir / "S1" / "a.zip")])
    with pytest.raises(
        manifests.ManifestError,
        match=r"step decode: 1 input product\(s\) but production\.kubernetes\.products_claim is not set",
    ):
        manifests.build_job(step, config)


@pytest.mark.parametrize("where", ["/srv/elsewhere/a.zip", "{products}/../a.zip", "{products}"])
def test_an_input_outside_the_catalog_storage_is_refused_naming_it(tmp_path: Path, where: str) -> None:
    config = staged_settings(tmp_path)
    path = where.format(products=config.products_dir)
    with pytest.raises(
        manifests.ManifestError,
        match=rf"input {re.escape(path)} is not under production\.catalog\.storage_dir",
    ):
        manifests.build_job(launch(config, input_paths=[path]), config)


def test_two_inputs_of_the_same_name_are_refused(tmp_path: Path) -> None:
    products = staged_settings(tmp_path).products_dir
    same = [str(products / "A" / "x.zip"), str(products / "B" / "x.zip")]
    with pytest.raises(manifests.ManifestError, match=r"two inputs named x\.zip"):
        staged_job(tmp_path, input_paths=same)


@pytest.mark.parametrize(
    ("kubernetes", "message"),
    [
        ({"work_claim": "refsys-work"}, "work_claim and work_mount: set both"),
        ({"work_mount": "/mnt/work"}, "work_claim and work_mount: set both"),
        ({"products_claim": "Products_Claim"}, "products_claim"),
    ],
)
def test_claim_settings_are_checked(tmp_path: Path, kubernetes: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(tmp_path, **kubernetes)
