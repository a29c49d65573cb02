"""Tool-call parsers: turn the text of one model turn into the tool calls it makes (``rollout.agent.tool_parser``).

Formats (:data:`PARSERS`):

* ``hermes`` (Hermes / Qwen2.5): ``<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>``, any
  number of blocks; ``arguments`` may also be a JSON-encoded string (decoded) or absent (no arguments).
* ``call`` (for tiny models): ``<call>add(48213, 90872)</call>`` or ``<call>add(a=1, b=2)</call>``: a call of a bare
  name with Python literal arguments, read with :mod:`ast` and :func:`ast.literal_eval`, never evaluated.
* ``none``: finds no calls.

Text outside the tags is ignored; calls come back in the order written. A malformed call is not a call: it gives
one short error (< 200 characters: what is wrong and what a valid call looks like), shown to the model as that
tool's error observation. ``stop`` holds the closing tag, so a turn ends right after a call (the engines keep the
stop string in the text and ids). Floor 2: standard library only.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["PARSERS", "CallParser", "HermesParser", "NoneParser", "Parsed", "ToolCall", "ToolParser", "build_parser"]

_MAX_ERROR = 199  # characters of one error message
_MAX_CALL_CHARS = 20_000  # a `call` body longer than this is refused before parsing


@dataclass(frozen=True)
class ToolCall:
    """One tool call: ``name(*args, **kwargs)``; ``text`` is the whole call as written, tags included."""

    name: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    text: str = ""


@dataclass(frozen=True)
class Parsed:
    """The calls of one turn, in order, and one short error message per malformed call."""

    calls: tuple[ToolCall, ...]
    errors: tuple[str, ...]


@runtime_checkable
class ToolParser(Protocol):
    name: str
    stop: tuple[str, ...]  # strings that end a model turn right after a call (the closing tag)

    def parse(self, text: str) -> Parsed: ...

    def render_tools(self, specs: list[dict]) -> str: ...


def _blocks(text: str, open_tag: str, close_tag: str) -> list[tuple[str | None, str]]:
    """The tagged blocks of ``text`` in order: (inner text, raw block), or (None, raw start) for an opening tag
    with no closing tag before the next opening tag or the end."""
    found: list[tuple[str | None, str]] = []
    pos = text.find(open_tag)
    while pos != -1:
        inner_start = pos + len(open_tag)
        end = text.find(close_tag, inner_start)
        next_open = text.find(open_tag, inner_start)
        if end == -1 or (next_open != -1 and next_open < end):
            found.append((None, text[pos : next_open if next_open != -1 else len(text)]))
            pos = next_open
            continue
        found.append((text[inner_start:end], text[pos : end + len(close_tag)]))
        pos = text.find(open_tag, end + len(close_tag))
    return found


def _function(spec: dict) -> dict:
    """The ``function`` part of an OpenAI-style tool spec (a bare function dict is accepted too)."""
    function = spec.get("function", spec) if isinstance(spec, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ValueError(f"a tool spec must be {{'type': 'function', 'function': {{'name': ...}}}}, got {spec!r:.80}")
    return function


class _TaggedParser:
    """Calls between an opening and a closing tag; a subclass's ``_one(inner, raw)`` reads one block (a ToolCall,
    or an error message; ``inner`` is None for an opening tag without a closing tag)."""

    name, tags, stop, _example = "", ("", ""), (), ""

    def parse(self, text: str) -> Parsed:
        calls: list[ToolCall] = []
        errors: list[str] = []
        for inner, raw in _blocks(text, *self.tags):
            call = self._one(inner, raw)
            if isinstance(call, ToolCall):
                calls.append(call)
            else:
                errors.append(f"{call}; a valid call: {self._example}"[:_MAX_ERROR])
        return Parsed(tuple(calls), tuple(errors))


class HermesParser(_TaggedParser):
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (Hermes, Qwen2.5)."""

    name, tags = "hermes", ("<tool_call>", "</tool_call>")
    stop: tuple[str, ...] = ("</tool_call>",)
    _example = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'

    def _one(self, inner: str | None, raw: str) -> ToolCall | str:
        if inner is None:
            return "<tool_call> has no closing </tool_call>"
        try:
            body = json.loads(inner)
        except (ValueError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "too deeply nested"
            return f"invalid JSON in <tool_call> ({reason})"
        if not isinstance(body, dict):
            return "<tool_call> must hold a JSON object"
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            return 'the tool call has no "name" string'
        arguments = body.get("arguments")
        if isinstance(arguments, str):  # some models JSON-encode the arguments
            try:
                arguments = json.loads(arguments) if arguments.strip() else None
            except (ValueError, RecursionError):
                return f'"arguments" of {name:.40} is a string but not valid JSON'
        arguments = {} if arguments is None else arguments
        if not isinstance(arguments, dict):
            return f'"arguments" of {name:.40} must be a JSON object'
        return ToolCall(name.strip(), (), arguments, raw)

    def render_tools(self, specs: list[dict]) -> str:
        if not specs:
            return ""
        lines = "\n".join(json.dumps({"type": "function", "function": _function(s)}) for s in specs)
        return ("You may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n"
                f"<tools>\n{lines}\n</tools>\n\n"
                "For each function call, return a json object with function name and arguments within "
                "<tool_call></tool_call> XML tags:\n"
                '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


_KINDS = {ast.Call: "a call", ast.Name: "a name", ast.Attribute: "an attribute", ast.Subscript: "a subscript",
          ast.Lambda: "a lambda", ast.BinOp: "an operation", ast.Starred: "a starred argument"}
# JSON-schema type -> (the Python type shown, a sample literal for the example call)
_TYPES = {"integer": ("int", "1"), "number": ("float", "1.5"), "string": ("str", '"text"'), "boolean": ("bool", "True"),
          "array": ("list", "[]"), "object": ("dict", "{}")}


class CallParser(_TaggedParser):
    """``<call>name(literal, ..., key=literal)</call>`` blocks: Python call syntax, literal arguments only."""

    name, tags = "call", ("<call>", "</call>")
    stop: tuple[str, ...] = ("</call>",)
    _example = "<call>add(1, 2)</call> or <call>add(a=1, b=2)</call> (literal arguments only)"

    def _one(self, inner: str | None, raw: str) -> ToolCall | str:
        if inner is None:
            return "<call> has no closing </call>"
        if len(inner) > _MAX_CALL_CHARS:
            return f"the call is too long ({len(inner)} characters)"
        try:
            tree = ast.parse(inner.strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return "the call is not valid Python call syntax"
        node = tree.body
        if not isinstance(node, ast.Call):
            return "<call> must hold one call like name(...)"
        if not isinstance(node.func, ast.Name):
            return "the called function must be a bare tool name"
        name = node.func.id
        if any(kw.arg is None for kw in node.keywords):
            return f"**arguments are not allowed in a call of {name}"
        keys = [kw.arg for kw in node.keywords]
        if len(set(keys)) < len(keys):
            return f"a keyword argument of {name} is given twice"
        n = len(node.args)
        values = []
        for label, arg in [(str(i), a) for i, a in enumerate(node.args, 1)] + [(k.arg, k.value) for k in node.keywords]:
            try:
                values.append(_literal(arg))
            except _NotLiteral as exc:
                return f"argument {label} of {name} is {exc}, not a literal"
        return ToolCall(name, tuple(values[:n]), dict(zip(keys, values[n:])), raw)

    def render_tools(self, specs: list[dict]) -> str:
        if not specs:
            return ""
        lines, example = [], ""
        for spec in specs:
            function = _function(spec)
            params = function.get("parameters") or {}
            props = params.get("properties") or {}
            required = set(params.get("required") or ())
            shown, samples = [], []
            for pname, pspec in props.items():
                pspec = pspec if isinstance(pspec, dict) else {}
                kind = pspec.get("type")
                shown_type, sample = _TYPES.get(kind, ("any", "1")) if isinstance(kind, str) else ("any", "1")
                required_ = pname in required
                shown.append(f"{pname}: {shown_type}" + ("" if required_ else f" = {pspec.get('default')!r}"))
                samples += [sample] if required_ else []
            desc = " ".join(str(function.get("description") or "").split())
            lines.append(f"- {function['name']}({', '.join(shown)})" + (f": {desc}" if desc else ""))
            example = example or f"<call>{function['name']}({', '.join(samples)})</call>"
        return ("Tools: call one by writing <call>name(arguments)</call> with Python literal arguments "
                "(numbers, strings, lists, dicts, True/False/None); its result comes back in the next message.\n"
                + "\n".join(lines) + f"\nExample: {example}")


class _NotLiteral(Exception):
    """An argument that is not a literal; the message says what it is instead."""


def _literal(node: ast.AST) -> object:
    """The literal value of an argument node (``ast.literal_eval``: the node is never evaluated)."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        for sub in ast.walk(node):
            for kind, words in _KINDS.items():
                if isinstance(sub, kind) and kind is not ast.BinOp:
                    raise _NotLiteral(words) from None
        raise _NotLiteral(_KINDS.get(type(node), "an expression")) from None


class NoneParser:
    """No tool calls: every turn is plain text."""

    name, stop = "none", ()

    def parse(self, text: str) -> Parsed:
        return Parsed((), ())

    def render_tools(self, specs: list[dict]) -> str:
        return ""


PARSERS: dict[str, type] = {"hermes": HermesParser, "call": CallParser, "none": NoneParser}


def build_parser(name: str) -> ToolParser:
    """The parser registered under ``name`` (``rollout.agent.tool_parser``)."""
    if name not in PARSERS:
        known = ", ".join(sorted(PARSERS))
        raise ValueError(f"rollout.agent.tool_parser: unknown tool parser {name!r}; known: {known}")
    return PARSERS[name]()
