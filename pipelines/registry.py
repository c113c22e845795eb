"""The chain registry: every chain spec refsys knows, read from YAML files and checked against the configuration.

Chain files are a read-only base (DESIGN.md section 5): the bundled ``pipelines/chains/*.yaml`` (unless
``production.bundled_chains`` is off) plus every ``*.yaml``/``*.yml`` of ``production.chain_dirs``. A file that
does not validate stops the load with one line per problem, ``FILE:LINE: ITEM: message``, where ITEM is the
path of the culprit in the document (``steps.l2a.needs``, ``steps[1].resources.cpu``, ``triggers.cron[0]``):
an operator fixes every mistake of a file in one pass, and a typo never silently drops a chain.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from control_plane.core.config import ProcessorSettings, Settings
from pipelines.spec import GRAPH_ERROR, ChainSpec, Location, Problem, ProcessorRef, check_against

BUNDLED_DIR = Path(__file__).parent / "chains"
CHAIN_SUFFIXES = (".yaml", ".yml")
_NAMED_LISTS = frozenset({"steps"})
"""Lists whose entries have a unique ``name``: an item there is shown by name (``steps.l2a``), not index."""


class ChainSpecError(Exception):
    """Chain files that do not validate; ``problems`` holds one ``FILE:LINE: ITEM: message`` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class FileCheck:
    """The outcome of checking one chain file: its spec when it is valid, its problems otherwise."""

    path: Path
    spec: ChainSpec | None
    problems: list[str]


def load_chain_file(path: Path, settings: Settings) -> ChainSpec:
    """The chain in ``path``, valid in itself and against the configuration, or ``ChainSpecError``."""
    check = check_chain_file(path, settings)
    if check.spec is None:
        raise ChainSpecError(check.problems)
    return check.spec


def check_chain_file(path: Path, settings: Settings) -> FileCheck:
    """Read, parse and validate one chain file, collecting every problem instead of stopping at the first."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        return FileCheck(path, None, [f"{path}: file: cannot read it: {reason}"])
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return FileCheck(path, None, [f"{path}{line}: syntax: not valid YAML: {problem}"])
    if root is None or not isinstance(data, dict):
        return FileCheck(
            path, None, [f"{path}:1: chain: the document must be a mapping (id, version, steps ...)"]
        )
    lines = _LineIndex(root)
    problems = [f"{path}:{line}: {_item(loc, data)}: {message}" for loc, line, message in lines.duplicates]
    try:
        spec = ChainSpec.model_validate(data)
    except ValidationError as exc:
        located = [problem for error in exc.errors() for problem in _problems(error)]
        problems += [_line(path, lines, data, loc, message) for loc, message in located]
        return FileCheck(path, None, problems)
    problems += [
        _line(path, lines, data, loc, message) for loc, message in check_against(spec, settings.production)
    ]
    return FileCheck(path, None if problems else spec, problems)


def check_chain_files(paths: Iterable[Path], settings: Settings) -> list[FileCheck]:
    """Check each file, and that no two files define the same ``id@version`` (the second one is refused)."""
    checks: list[FileCheck] = []
    seen: dict[tuple[str, str], Path] = {}
    for path in paths:
        check = check_chain_file(path, settings)
        spec = check.spec
        if spec is not None:
            first = seen.setdefault((spec.id, spec.version), path)
            if first != path:
                message = f"{path}: id: chain {spec.key} is already defined in {first}"
                check = FileCheck(path, None, [message])
        checks.append(check)
    return checks


def chain_files(settings: Settings) -> list[Path]:
    """The chain files the configuration names, bundled first, each directory's files in name order.

    A configured directory that does not exist is refused (``ChainSpecError``): it is a typo or a missing
    mount, and starting without its chains would look like a quiet success."""
    directories = ([BUNDLED_DIR] if settings.production.bundled_chains else []) + list(
        settings.production.chain_dirs
    )
    missing = [
        f"{directory}: chain directory: does not exist" for directory in directories if not directory.is_dir()
    ]
    if missing:
        raise ChainSpecError(missing)
    return [
        path
        for directory in directories
        for path in sorted(directory.iterdir())
        if path.suffix in CHAIN_SUFFIXES and path.is_file()
    ]


def resolve_processor(settings: Settings, ref: ProcessorRef) -> ProcessorSettings:
    """The processor table's entry for ``ref`` (``KeyError`` when the table has no such name and version)."""
    for processor in settings.production.processors:
        if processor.name == ref.name and processor.version == ref.version:
            return processor
    raise KeyError(f"processor {ref.name} {ref.version} is not in production.processors")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order versions as people read them: ``1.10`` after ``1.9``, numbers before words in each part."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.\-+_]", version))


class ChainRegistry:
    """The valid chains by ``(id, version)``, each with the file it came from."""

    def __init__(self, chains: Mapping[tuple[str, str], tuple[ChainSpec, str]]) -> None:
        self._chains = dict(chains)
        self._latest: dict[str, ChainSpec] = {}
        for spec, _origin in self._chains.values():
            current = self._latest.get(spec.id)
            if current is None or version_key(spec.version) > version_key(current.version):
                self._latest[spec.id] = spec

    @classmethod
    def load(cls, settings: Settings) -> ChainRegistry:
        """Every configured chain (see the module docstring); ``ChainSpecError`` lists every problem found."""
        return cls.from_files(chain_files(settings), settings)

    @classmethod
    def from_files(cls, paths: Sequence[Path], settings: Settings) -> ChainRegistry:
        checks = check_chain_files(paths, settings)
        problems = [problem for check in checks for problem in check.problems]
        if problems:
            raise ChainSpecError(problems)
        return cls({(c.spec.id, c.spec.version): (c.spec, str(c.path)) for c in checks if c.spec is not None})

    def get(self, chain_id: str, version: str | None = None) -> ChainSpec:
        """A chain by id, its latest version unless ``version`` is given; ``KeyError`` when unknown."""
        if version is None:
            return self._latest[chain_id]
        return self._chains[(chain_id, version)][0]

    def all(self) -> list[ChainSpec]:
        """Every version of every chain, by id then version."""
        specs = [spec for spec, _origin in self._chains.values()]
        return sorted(specs, key=lambda spec: (spec.id, version_key(spec.version)))

    def versions(self, chain_id: str) -> list[str]:
        """The versions of ``chain_id``, oldest first (empty when unknown)."""
        return [spec.version for spec in self.all() if spec.id == chain_id]

    def origin(self, chain_id: str, version: str) -> str:
        """The file a chain version was read from; ``KeyError`` when unknown."""
        return self._chains[(chain_id, version)][1]

    def consumers_of(self, product_type: str) -> list[ChainSpec]:
        """The latest version of every chain that a product of ``product_type`` triggers."""
        return [
            spec for _id, spec in sorted(self._latest.items()) if product_type in spec.triggers.product_types
        ]


# From pydantic's errors to one line per problem.


def _problems(error: ErrorDetails) -> list[Problem]:
    """One pydantic error as located problems; the chain's cross-field error carries several."""
    if error["type"] == GRAPH_ERROR:
        return list(error.get("ctx", {})["problems"])
    return [(tuple(error["loc"]), _message(error))]


def _message(error: ErrorDetails) -> str:
    kind, loc, value = error["type"], tuple(error["loc"]), error.get("input")
    if kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "allowed: " + ", ".join(allowed)
        return f"unknown key ({hint})"
    if kind == "missing":
        return "required key is missing"
    if kind == "too_short" and isinstance(value, list | dict) and not value:
        return "must not be empty: at least one entry is required"
    message = error["msg"].removeprefix("Value error, ").replace("Input should", "should")
    if value is not None and not isinstance(value, dict | list):
        message += f" (got {value!r})"
    return message


def _fields_at(loc: Location) -> list[str]:
    """The keys the model allows at ``loc`` (for "did you mean"), following list and dict items through."""
    annotation: Any = ChainSpec
    for part in loc:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(part, str):
            field = annotation.model_fields.get(part)
            annotation = field.annotation if field else None
        else:
            annotation = _item_type(annotation)
        if annotation is None:
            return []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _item_type(annotation: Any) -> Any:
    """The element type of ``list[X]`` / ``dict[str, X]`` (X unwrapped of ``Annotated``), else None."""
    origin = typing.get_origin(annotation)
    if origin not in (list, dict):
        return None
    item = typing.get_args(annotation)[-1]
    while typing.get_origin(item) is typing.Annotated:
        item = typing.get_args(item)[0]
    return None if isinstance(item, types.UnionType) else item


def _item(loc: Location, data: Any) -> str:
    """``loc`` for people: ``steps.l2a.resources.cpu`` when the step has a unique name, ``outputs[0].step``."""
    text = ""
    node = data
    parent: str | int | None = None
    for part in loc:
        name = _entry_name(node, part) if parent in _NAMED_LISTS else None
        if name is not None:
            text += f".{name}"
        elif isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
        node = _child(node, part)
        parent = part
    return text or "chain"


def _entry_name(node: Any, index: str | int) -> str | None:
    if not isinstance(node, list) or not isinstance(index, int) or not 0 <= index < len(node):
        return None
    name = node[index].get("name") if isinstance(node[index], dict) else None
    names = [entry.get("name") for entry in node if isinstance(entry, dict)]
    return name if isinstance(name, str) and name and names.count(name) == 1 else None


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def _line(path: Path, lines: _LineIndex, data: Any, loc: Location, message: str) -> str:
    return f"{path}:{lines.line_of(loc)}: {_item(loc, data)}: {message}"


class _LineIndex:
    """Line numbers of the YAML nodes, to point at the line of an item (or of its nearest present parent)."""

    def __init__(self, root: yaml.Node) -> None:
        self.root = root
        self.duplicates: list[tuple[Location, int, str]] = []
        self._seen: set[int] = set()
        self._find_duplicates(root, ())

    def line_of(self, loc: Location) -> int:
        node = self.root
        line = node.start_mark.line + 1
        for part in loc:
            child = self._child(node, part)
            if child is None:
                break
            node, line = child
        return line

    @staticmethod
    def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node, int] | None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    # A scalar is reported at its key's line; a block mapping or list at its key too.
                    return value, key.start_mark.line + 1
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            item = node.value[part]
            return item, item.start_mark.line + 1
        return None

    def _find_duplicates(self, node: yaml.Node, loc: Location) -> None:
        if id(node) in self._seen:  # an alias: its node was walked already (and may contain itself)
            return
        self._seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                name = str(key.value)
                line = key.start_mark.line + 1
                if name in first:
                    message = f"duplicate key (first at line {first[name]}; YAML would keep only the last)"
                    self.duplicates.append(((*loc, name), line, message))
                first.setdefault(name, line)
                self._find_duplicates(value, (*loc, name))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._find_duplicates(item, (*loc, index))
