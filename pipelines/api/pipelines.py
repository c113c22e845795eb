"""Chains over HTTP: what the registry holds, each version with the file it came from (``pipelines:read``).

Chain files are a read-only base (DESIGN.md section 5), so the API shows each chain's origin: an operator sees
at once which file to change. The list gives every chain at its latest version with all its versions; the detail
gives the whole spec of one version (the latest unless ``version`` is asked for).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel

from control_plane.core.auth.tokens import Principal
from control_plane.core.deps import Authorize
from control_plane.core.responses import json_response
from pipelines.registry import ChainRegistry
from pipelines.spec import ChainSpec, ProcessorRef, TriggerSpec

router = APIRouter(prefix="/api/v1/pipelines", tags=["pipelines"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no chain (or chain version) of that id"}}


class ChainVersion(BaseModel):
    version: str
    origin: str
    """The chain file this version was read from."""


class StepSummary(BaseModel):
    name: str
    processor: ProcessorRef
    needs: list[str]


class ChainSummary(BaseModel):
    id: str
    version: str
    """The latest version."""
    mission: str
    description: str
    lane: str
    origin: str
    """The file of the latest version."""
    versions: list[ChainVersion]
    steps: list[StepSummary]
    triggers: TriggerSpec
    outputs: list[str]
    """Product types the chain publishes."""


class ChainList(BaseModel):
    items: list[ChainSummary]


class ChainDetail(ChainSpec):
    """The whole spec of one chain version, with where it came from and the other versions."""

    origin: str
    versions: list[ChainVersion]


def _registry(request: Request) -> ChainRegistry:
    registry: ChainRegistry = request.app.state.production.registry
    return registry


RegistryDep = Annotated[ChainRegistry, Depends(_registry)]


@router.get("", response_model=ChainList)
def list_pipelines(
    registry: RegistryDep, _who: Annotated[Principal, Depends(Authorize("pipelines:read"))]
) -> Response:
    """Every chain at its latest version, with all its versions, steps, triggers and origin files."""
    chain_ids = sorted({spec.id for spec in registry.all()})
    return json_response({"items": [_summary(registry, registry.get(chain_id)) for chain_id in chain_ids]})


@router.get("/{chain_id}", response_model=ChainDetail, responses=NOT_FOUND)
def get_pipeline(
    registry: RegistryDep,
    _who: Annotated[Principal, Depends(Authorize("pipelines:read"))],
    chain_id: Annotated[str, Path(max_length=64)],
    version: Annotated[
        str | None, Query(max_length=32, description="a version; the latest when omitted")
    ] = None,
) -> Response:
    """One chain version's whole spec (inputs, steps, outputs, triggers, parameters), its origin and versions."""
    try:
        spec = registry.get(chain_id, version)
    except KeyError:
        which = f"chain {chain_id!r}" + (f" version {version!r}" if version else "")
        raise HTTPException(404, f"{which} is not in the registry") from None
    body = {
        **spec.model_dump(mode="json"),
        "origin": registry.origin(spec.id, spec.version),
        "versions": _versions(registry, spec.id),
    }
    return json_response(body)


def _versions(registry: ChainRegistry, chain_id: str) -> list[dict[str, str]]:
    return [
        {"version": version, "origin": registry.origin(chain_id, version)}
        for version in registry.versions(chain_id)
    ]


def _summary(registry: ChainRegistry, spec: ChainSpec) -> dict[str, Any]:
    return {
        "id": spec.id,
        "version": spec.version,
        "mission": spec.mission,
        "description": spec.description,
        "lane": spec.lane,
        "origin": registry.origin(spec.id, spec.version),
        "versions": _versions(registry, spec.id),
        "steps": [
            {"name": step.name, "processor": step.processor.model_dump(), "needs": list(step.needs)}
            for step in spec.steps
        ],
        "triggers": spec.triggers.model_dump(),
        "outputs": [output.product_type for output in spec.outputs],
    }
