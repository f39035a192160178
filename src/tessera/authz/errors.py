"""Typed errors of the decision point: policy problems (with locations) and AuthZEN errors."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tessera.errors import AppError


@dataclass(frozen=True)
class PolicyProblem:
    """One problem in a policy source, at file:line:column."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class PolicyError(AppError):
    """Policies that do not parse or do not validate; the active version stays as it was."""

    status = 422
    code = "invalid_policy"

    def __init__(self, problems: list[PolicyProblem], message: str | None = None) -> None:
        self.problems = problems
        first = str(problems[0]) if problems else "invalid policy"
        super().__init__(message or first, extra={"problems": [asdict(p) for p in problems]})


class AuthZENError(Exception):
    """A whole-request AuthZEN error (Authorization API 1.0 HTTPS binding): a 4xx status."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class UnknownEntityType(AuthZENError):
    def __init__(self, type_name: str) -> None:
        super().__init__(f"unknown entity type {type_name!r}", code="unknown_entity_type")
        self.type_name = type_name
