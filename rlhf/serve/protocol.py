"""Protocol 1 of the reward server, the request side: the fields of a ``POST /v1/score`` body and their checks.

``parse_score_request`` turns a parsed JSON body into (components, prompts, completions, columns) or raises a
``RequestError`` (400, or 413 for too many samples) whose message names the field, the sample and the component.
The protocol as a whole is described in ``reward_server.py``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

PROTOCOL = 1
REQUEST_FIELDS = ("protocol", "components", "prompts", "completions", "columns")
_RESERVED_COLUMNS = ("prompts", "completions")


class RequestError(Exception):
    """A request answered with an error status; ``extra`` goes into the JSON body next to ``error``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


def parse_score_request(payload: Any, known: Sequence[str], max_batch: int) -> tuple[
        list[str], list[str], list[str], dict[str, list]]:
    """(component names, prompts, completions, columns) of a /v1/score body, or a 400/413 naming what is wrong.
    ``known``: the names of the served components, in server order (the default)."""
    if not isinstance(payload, dict):
        raise RequestError(400, f"the request body must be a JSON object, got {json_type(payload)}")
    unknown = [k for k in payload if k not in REQUEST_FIELDS]
    if unknown:
        raise RequestError(400, f"unknown field {unknown[0]!r} in the request; protocol {PROTOCOL} fields are: "
                                f"{', '.join(REQUEST_FIELDS)}", field=unknown[0])
    if "protocol" not in payload:
        raise RequestError(400, f"field 'protocol' is missing: send \"protocol\": {PROTOCOL}", field="protocol")
    protocol = payload["protocol"]
    if isinstance(protocol, bool) or protocol != PROTOCOL:
        raise RequestError(400, f"field 'protocol': this server speaks protocol {PROTOCOL}, the request says "
                                f"{protocol!r}", field="protocol")
    prompts = _list_field(payload, "prompts")
    if len(prompts) > max_batch:
        raise RequestError(413, f"batch of {len(prompts)} samples exceeds the server's max_batch of {max_batch}; "
                                f"split it into smaller requests", field="prompts")
    completions = _list_field(payload, "completions")
    if len(completions) != len(prompts):
        raise RequestError(400, f"field 'completions' has {len(completions)} values for {len(prompts)} prompts",
                           field="completions")
    _all_strings("prompts", prompts)
    _all_strings("completions", completions)
    columns = _columns(payload.get("columns", {}), len(prompts))
    return _requested(payload.get("components"), known), prompts, completions, columns


def json_type(value: Any) -> str:
    """How JSON calls the type of ``value`` ('an object', 'a number'...), for messages."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _list_field(payload: dict, name: str) -> list:
    if name not in payload:
        raise RequestError(400, f"field {name!r} is missing: send a list with one string per sample", field=name)
    value = payload[name]
    if not isinstance(value, list):
        raise RequestError(400, f"field {name!r} must be a list of strings, got {json_type(value)}", field=name)
    return value


def _all_strings(name: str, values: list) -> None:
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise RequestError(400, f"field {name!r}, sample {i}: expected a string, got {json_type(v)}",
                               field=name, sample=i)


def _columns(value: Any, n: int) -> dict[str, list]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(400, f"field 'columns' must be an object {{column: [one value per sample]}}, got "
                                f"{json_type(value)}", field="columns")
    columns: dict[str, list] = {}
    for name, values in value.items():
        if name in _RESERVED_COLUMNS:
            raise RequestError(400, f"field 'columns': a column may not be named {name!r}", field="columns")
        if not isinstance(values, list):
            raise RequestError(400, f"column {name!r} must be a list with one value per sample, got "
                                    f"{json_type(values)}", field="columns", column=name)
        if len(values) != n:
            raise RequestError(400, f"column {name!r} has {len(values)} values for {n} samples",
                               field="columns", column=name)
        columns[name] = values
    return columns


def _requested(value: Any, known: Sequence[str]) -> list[str]:
    if value is None:
        return list(known)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError(400, "field 'components' must be a list of component names", field="components")
    if not value:
        raise RequestError(400, "field 'components' is empty: leave it out to score with every component",
                           field="components")
    seen: set[str] = set()
    for name in value:
        if name not in known:
            raise RequestError(400, f"unknown component {name!r}; this server serves: {', '.join(known)}",
                               field="components", component=name)
        if name in seen:
            raise RequestError(400, f"component {name!r} is requested twice", field="components", component=name)
        seen.add(name)
    return list(value)
