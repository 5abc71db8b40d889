"""The base of every configuration section, and its deprecated keys."""

from __future__ import annotations

import sys
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator


class DeprecatedKeyConflict(ValueError):
    """A key and its deprecated alias given together (``timeout_s`` and ``timeout``)."""

    def __init__(self, path: str, old: str, new: str) -> None:
        self.path, self.old, self.new = path, old, new
        super().__init__(
            f"both {path}{old} and {path}{new} are set; {old} is the deprecated spelling of "
            f"{new}: keep only {new}"
        )


class Section(BaseModel):
    """A configuration section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: old key -> new key: the old one still works, with a DeprecationWarning naming the new
    #: one (e.g. ``{"timeout_s": "timeout"}`` when seconds became a Duration)
    deprecated_keys: ClassVar[Mapping[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _rename_deprecated(cls, data: Any) -> Any:
        if cls.deprecated_keys and isinstance(data, Mapping):
            return _rename_here(cls, data, "")
        return data


_PACKAGE_DIR = str(Path(__file__).parent.parent)


def _callers_level() -> int:
    """The ``stacklevel`` of the first frame outside this package and pydantic: the
    warning then points at the application's call (and shows in ``__main__``)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE_DIR) or "pydantic" in frame.f_code.co_filename
    ):
        frame, level = frame.f_back, level + 1
    return level


def _key(path: str, key: str) -> str:
    return f"{path}{key}"


def _rename_here(
    model: type[Section],
    data: Mapping[str, Any],
    path: str,
    spell: Callable[[str, str], str] = _key,
) -> dict[str, Any]:
    out = dict(data)
    for old, new in model.deprecated_keys.items():
        if old not in out or new not in model.model_fields:
            continue
        if new in out:
            raise DeprecatedKeyConflict(path, old, new)
        warnings.warn(
            f"mlflow-llmops configuration: {spell(path, old)} is deprecated; use "
            f"{spell(path, new)} "
            f"(a duration such as 10s, 500ms, 2m; a number still means seconds)",
            DeprecationWarning,
            stacklevel=_callers_level(),
        )
        out[new] = out.pop(old)
    return out


def _sections(annotation: Any) -> list[type[Section]]:
    """The Section classes a field's annotation holds directly (``X``, ``X | None``)."""
    if isinstance(annotation, type):
        return [annotation] if issubclass(annotation, Section) else []
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [s for a in typing.get_args(annotation) for s in _sections(a)]
    return []


def rename_deprecated_keys(
    model: type[BaseModel],
    data: Mapping[str, Any],
    path: str = "",
    spell: Callable[[str, str], str] | None = None,
) -> dict[str, Any]:
    """``data`` (the raw mapping of ``model``, nested sections included) with every
    deprecated key renamed to its new one, a DeprecationWarning for each. Run on each
    source (file, environment, arguments) before they are merged, so that a later source
    overrides an earlier one whichever spelling each uses; raises
    :class:`DeprecatedKeyConflict` when one source gives both spellings. ``spell(path,
    key)`` names a key in the warning (e.g. as its ``MLFLOW_LLMOPS__...`` variable)."""
    spell = spell or _key
    out = _rename_here(model, data, path, spell) if issubclass(model, Section) else dict(data)
    for name, field in model.model_fields.items():
        sub = out.get(name)
        if isinstance(sub, Mapping):
            for section in _sections(field.annotation):
                out[name] = rename_deprecated_keys(section, sub, f"{path}{name}.", spell)
                break
    return out


def new_key_path(model: type[BaseModel], parts: list[str]) -> list[str]:
    """The key path ``parts`` (``["tracing", "shutdown_timeout_s"]``) with deprecated keys
    spelled the new way (``["tracing", "shutdown_timeout"]``)."""
    out: list[str] = []
    current: type[BaseModel] | None = model
    for p in parts:
        if current is not None and issubclass(current, Section):
            p = current.deprecated_keys.get(p, p)
        out.append(p)
        field = current.model_fields.get(p) if current is not None else None
        found = _sections(field.annotation) if field is not None else []
        current = found[0] if found else None
    return out
