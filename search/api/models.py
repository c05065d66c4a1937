"""Pydantic models of the HTTP API: every request body is validated here (422 with field errors)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from quant.budget import Budget
from quant.config import Bits, ConfigError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]+$"  # a NUL byte in a path reached the OS (a 500); newlines end up in logs
MAX_SEED = 2**32 - 1  # numpy's generators take seeds below 2**32; larger ones failed in the background
Item = Annotated[str, Field(min_length=1, max_length=100, pattern=NO_CONTROL_CHARS)]


class StudyCreate(BaseModel):
    """A study to create and launch: the StudySpec fields plus a unique name."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Unique study name (letters, digits, _ . -).")
    model: str = Field("builtin", min_length=1, max_length=4096, pattern=NO_CONTROL_CHARS,
                       description="'builtin' or a diffusers pipeline directory under a configured model root.")
    budget: list[Item] = Field(default_factory=lambda: ["wbits=4.5"], min_length=1, max_length=8,
                               description="Limits like wbits=4.5 or size=0.3x, each a finite positive number.")
    estimators: list[Item] = Field(default_factory=lambda: ["gradient"], min_length=1, max_length=8)
    solver: str = Field("ilp", max_length=32)
    timestep_groups: int = Field(3, ge=1, le=1000)
    num_steps: int = Field(20, ge=1, le=1000)
    trials: int = Field(8, ge=1, le=1000)
    bits: list[Item] = Field(default_factory=lambda: ["W8A8", "W6A8", "W4A8", "W8A16", "W4A16"],
                            min_length=1, max_length=32)
    backend: str = Field("int8", pattern=r"^(int8|fake)$")
    eval_samples: int = Field(20, ge=1, le=10_000)
    calibration_samples: int = Field(10, ge=1, le=10_000)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    baselines: list[Item] = Field(default_factory=lambda: ["W8A8", "W4A8"], max_length=32)
    full_samples: int = Field(40, ge=1, le=10_000)
    patience: int = Field(8, ge=0, le=10_000)

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: list[str]) -> list[str]:
        try:
            Budget.parse(list(v))  # finite, positive, known metrics
        except (ConfigError, ValueError) as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("bits", "baselines")
    @classmethod
    def _bits(cls, v: list[str]) -> list[str]:
        for b in v:
            try:
                Bits.parse(b)
            except (ConfigError, ValueError) as e:
                raise ValueError(str(e)) from None
        return v

    @field_validator("estimators")
    @classmethod
    def _estimators(cls, v: list[str]) -> list[str]:
        from search.study import check_estimators

        check_estimators(v)
        return v

    @field_validator("solver")
    @classmethod
    def _solver(cls, v: str) -> str:
        from search.study import check_solver

        check_solver(v)
        return v

    @model_validator(mode="after")
    def _groups(self) -> StudyCreate:
        if self.timestep_groups > self.num_steps:
            raise ValueError(f"timestep_groups must be between 1 and num_steps ({self.num_steps})")
        from search.study import StudySpec

        try:  # every rule of StudySpec, as a 422 with the body's errors
            StudySpec(**self.spec_kwargs())
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return self

    def spec_kwargs(self) -> dict[str, Any]:
        """The StudySpec keyword arguments (lists as tuples)."""
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.model_dump(exclude={"name"}).items()}


class StudyOut(BaseModel):
    name: str
    state: str
    reason: str | None = Field(None, description="Why the study is FAILED (the error that stopped it).")
    spec: dict[str, Any]
    created_at: str
    updated_at: str


class StudyDetail(StudyOut):
    candidates: dict[str, int] = Field(description="Candidates per state (progress).")
    total: int
    done: int
    evaluations: dict[str, list[int]] = Field(description="Per fidelity (cheap, full): [done, queued so far].")
    validation: list[dict[str, Any]] | None = Field(
        None, description="The latest sensitivity validation (`bitsearch validate`): rank correlations per estimator.")


class CandidateOut(BaseModel):
    id: int
    origin: str
    state: str
    attempts: int
    reason: str | None
    config: dict[str, Any]


class FrontPointOut(BaseModel):
    candidate_id: int
    origin: str
    metrics: dict[str, float]
    costs: dict[str, float]
    measured: bool
