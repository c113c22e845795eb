"""Sigma detection: rules parsed by pySigma, compiled to in-process predicates over flat events."""

from security.sigma.compiler import (
    CompiledRule,
    compile_collection,
    compile_file,
    compile_rule,
    compile_yaml,
)
from security.sigma.errors import SigmaCompileError

__all__ = [
    "CompiledRule",
    "SigmaCompileError",
    "compile_collection",
    "compile_file",
    "compile_rule",
    "compile_yaml",
]
