"""Pydantic's validation errors as caviar's problems: a dotted path a user can follow, and a
message that says what to fix.

What the messages name (the valid keys at a place, the tags of the discriminated unions that
pydantic puts in a location) is read from the models themselves, so a new field or section is
listed without being written down a second time.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Tag, ValidationError

from orchestrator.errors import Problem


def problems_from(error: ValidationError, root: type[BaseModel]) -> list[Problem]:
    """Every error of ``error`` (raised validating ``root``) as a :class:`Problem`."""
    tags = union_tags(root)
    problems = []
    for item in error.errors():
        # The last part of an unknown key's location is the key the user wrote, even one
        # spelled like a union's tag; anywhere else a tag is pydantic's, and dropped.
        last = len(item["loc"]) - 1 if item["type"] == "extra_forbidden" else -1
        loc = tuple(
            part
            for i, part in enumerate(item["loc"])
            if i == last or not (isinstance(part, str) and part in tags)
        )
        problems.append(Problem(_format_path(loc), pydantic_message(item, loc, root)))
    return problems


def pydantic_message(
    item: Mapping[str, Any], loc: tuple[Any, ...] = (), root: type[BaseModel] | None = None
) -> str:
    """One pydantic error item's message, lower-cased, with the value it refused; an unknown
    key's lists the keys valid at ``loc`` in ``root``."""
    kind = item["type"]
    message = str(item["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    if kind == "extra_forbidden":
        return _unknown_key_message(loc, root)
    if kind == "missing":
        return "is required"
    value = item.get("input")
    if (
        kind != "value_error"
        and isinstance(value, (bool, int, float, str))
        and not isinstance(value, dict)
    ):
        message += f", got {value!r}"
    return message[:1].lower() + message[1:]


def _format_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _unknown_key_message(loc: tuple[Any, ...], root: type[BaseModel] | None) -> str:
    key = str(loc[-1]) if loc else ""
    valid = valid_keys(root, loc[:-1]) if root is not None else []
    if not valid:
        return "unknown key"
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint} (valid keys: {', '.join(valid)})"


def valid_keys(root: type[BaseModel], parent: tuple[Any, ...]) -> list[str]:
    """The keys a mapping at ``parent`` (a location without union tags) may hold: the fields
    of every model the annotation there admits, in the union's order, each once."""
    annotations: list[Any] = [root]
    for part in parent:
        inner: list[Any] = []
        for admitted in (t for a in annotations for t in _admitted(a)):
            if _is_model(admitted):
                field = admitted.model_fields.get(str(part))
                if field is not None:
                    inner.append(field.annotation)
            elif get_origin(admitted) is dict:  # a mapping by the user's own names (space)
                inner.append(get_args(admitted)[1])
            elif get_origin(admitted) is list and isinstance(part, int):
                inner.append(get_args(admitted)[0])
        annotations = inner
    keys: list[str] = []
    for admitted in (t for a in annotations for t in _admitted(a)):
        if _is_model(admitted):
            keys += [key for key in admitted.model_fields if key not in keys]
    return keys


@cache
def union_tags(root: type[BaseModel]) -> frozenset[str]:
    """The tags of every discriminated union under ``root``: pydantic puts them in an error's
    location, where a user would not recognise them. Only these are dropped from a path, so a
    user's own key that merely looks like one ("_____") keeps its place."""
    return frozenset(_tags_in(root, set()))


def _tags_in(annotation: Any, seen: set[type[BaseModel]]) -> Iterator[str]:
    if _is_model(annotation):
        if annotation in seen:
            return
        seen.add(annotation)
        for field in annotation.model_fields.values():
            yield from _tags_in(field.annotation, seen)
        return
    if get_origin(annotation) is Annotated:
        inner, *metadata = get_args(annotation)
        yield from (item.tag for item in metadata if isinstance(item, Tag))
        yield from _tags_in(inner, seen)
        return
    for argument in get_args(annotation):  # unions, dict[str, X], list[X]
        yield from _tags_in(argument, seen)


def _admitted(annotation: Any) -> Iterator[Any]:
    """The types an annotation admits, with ``Annotated`` and unions (``None`` too) unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        yield from _admitted(get_args(annotation)[0])
    elif origin is Union or origin is types.UnionType:
        for argument in get_args(annotation):
            yield from _admitted(argument)
    else:
        yield annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
