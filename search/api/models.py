"""Pydantic models of the HTTP API: every request body is validated here (422 with field errors)."""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from quant.config import ConfigError
from search.spec import StudySpec, check_option

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]+$"  # a NUL byte in a path reached the OS (a 500); newlines end up in logs
Item = Annotated[str, Field(min_length=1, max_length=100, pattern=NO_CONTROL_CHARS)]


def _spec_fields() -> dict[str, Any]:
    """The body's fields, one per StudySpec option: its default, help and bounds (search.spec)."""
    out: dict[str, Any] = {}
    for f in fields(StudySpec):
        default = StudySpec.default(f.name)
        text, low, high = StudySpec.describe(f.name)
        if isinstance(default, list):
            # options given as key=value (empty by default) and baselines may be empty; bits, estimators not
            at_least = 0 if not default or f.name == "baselines" else 1
            out[f.name] = (list[Item], Field(default_factory=lambda d=default: list(d), min_length=at_least,
                                             max_length=32, description=text))
        elif isinstance(default, int):
            out[f.name] = (int, Field(default, ge=low, le=high, description=text))
        else:
            out[f.name] = (str, Field(default, min_length=1, max_length=4096, pattern=NO_CONTROL_CHARS,
                                      description=text))
    return out


_SpecBody = create_model("StudySpecBody", __config__=ConfigDict(extra="forbid"), **_spec_fields())


class StudyCreate(_SpecBody):  # type: ignore[misc, valid-type]
    """A study to create and launch: a unique name and the StudySpec options (the same defaults)."""

    name: str = Field(pattern=NAME_PATTERN, description="Unique study name (letters, digits, _ . -).")

    @field_validator("*")
    @classmethod
    def _option(cls, value: object, info: ValidationInfo) -> object:
        if info.field_name != "name":
            try:  # the option's own rules, reported as this field's error
                check_option(str(info.field_name), value)
            except ConfigError as e:
                raise ValueError(str(e)) from None
        return value

    @model_validator(mode="after")
    def _spec(self) -> StudyCreate:
        try:  # every rule of StudySpec, as a 422 with the body's errors
            self.spec()
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return self

    def spec(self) -> StudySpec:
        """The study's spec: the fields the body sets, image counts it leaves out sized to the model
        (`search.sizing`), the rest the spec's defaults."""
        from search.sizing import sized_spec

        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in self.model_dump(exclude={"name"}, exclude_unset=True).items()}
        return sized_spec(kwargs)[0]


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
