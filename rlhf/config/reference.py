"""The recipe reference: every key of the recipe schema (type, default, range, description), read from the pydantic
models of ``rlhf.config`` so that it cannot drift from them.

    python -m rlhf.config.reference            # print the text of docs/recipe_reference.md
    python -m rlhf.config.reference --write    # rewrite docs/recipe_reference.md
    rlhf explain KEY                           # one key (rollout.max_new_tokens), or the keys under a section

Key paths: ``section.key``; ``[]`` stands for any item of a list (``rewards[].plugin``; an override writes
``rewards.0.plugin``), ``<name>`` for any key of a mapping (``weighting.schedules.<name>.end``), and
``[kind=K]`` qualifies the keys of one ``objective`` kind (``objective[kind=ppo].critic.lr``; ``rlhf explain``
also takes ``objective.critic.lr``). tests/unit/test_recipe_reference.py keeps the docs file equal to this output.
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from rlhf.config.schema import Recipe

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "recipe_reference.md"
REGENERATE = "python -m rlhf.config.reference --write"


@dataclass(frozen=True)
class Entry:
    """One key of the recipe: a value, or a section (a model, or a list / mapping of models) holding more keys."""

    parts: tuple[str, ...]  # ("objective", "kind=ppo", "critic", "lr"); "[]" a list item, "<name>" a mapping key
    type: str
    default: str
    range: str
    description: str
    section: bool = False
    doc: str = ""  # a section's class docstring (markdown)

    @property
    def path(self) -> str:
        """The qualified key path: ``objective[kind=ppo].critic.lr``, ``rewards[].plugin``."""
        out = ""
        for p in self.parts:
            out += "[]" if p == "[]" else f"[{p}]" if p.startswith("kind=") else f".{p}" if out else p
        return out

    @property
    def kind(self) -> str | None:
        """The objective kind whose key this is (None outside the per-kind keys)."""
        return next((p[5:] for p in self.parts if p.startswith("kind=")), None)

    @property
    def key(self) -> str:
        """The path without the kind qualifier: ``objective.critic.lr``."""
        return re.sub(r"\[kind=[^\]]+\]", "", self.path)


# --------------------------------------------------------------------------- walking the schema


def entries() -> list[Entry]:
    """Every key of :class:`Recipe`, depth first in declaration order (a section before the keys under it)."""
    out: list[Entry] = []
    for name, field in Recipe.model_fields.items():
        _walk((name,), field, out)
    return out


def _walk(parts: tuple[str, ...], field: FieldInfo, out: list[Entry]) -> None:
    model, slot = _model_of(field.annotation)
    if isinstance(model, tuple):  # a discriminated union of sections: one set of keys per kind
        tag = field.discriminator if isinstance(field.discriminator, str) else "kind"
        kinds = [m.model_fields[tag].default for m in model]
        out.append(_entry(parts, field, None))
        out.append(Entry((*parts, tag), "one of {" + ", ".join(kinds) + "}", _default_tag(field, tag), "",
                         f"which {parts[-1]} this is; the other {parts[-1]} keys depend on it (listed per {tag})"))
        for m, k in zip(model, kinds):
            for name, sub in m.model_fields.items():
                if name != tag:
                    _walk((*parts, f"{tag}={k}", name), sub, out)
        return
    out.append(_entry(parts, field, model))
    if model is not None:
        inner = (*parts, slot) if slot else parts
        for name, sub in model.model_fields.items():
            _walk((*inner, name), sub, out)


def _default_tag(field: FieldInfo, tag: str) -> str:
    """The default of a union's tag: the tag of the field's default section."""
    if field.is_required():
        return "required"
    return _yaml(getattr(field.get_default(call_default_factory=True), tag, None))


def _model_of(annotation: Any) -> tuple[Any, str]:
    """(the section model, a tuple of them for a union, or None; "" / "[]" / "<name>" for a list or mapping)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and args and _is_model(args[0]):
        return args[0], "[]"
    if origin is dict and len(args) == 2 and _is_model(args[1]):
        return args[1], "<name>"
    if origin in (Union, types.UnionType):
        models = tuple(a for a in args if _is_model(a))
        if len(models) == 1 and all(a in (models[0], type(None)) for a in args):
            return models[0], ""
        if len(models) > 1 and len(models) == len(args):
            return models, ""
    return None, ""


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _entry(parts: tuple[str, ...], field: FieldInfo, model: Any) -> Entry:
    doc = _doc(model if _is_model(model) else None)
    description = (field.description or "").strip() or doc.split("\n\n")[0]
    type_ = _type(field.annotation)
    if isinstance(field.discriminator, str):
        type_ = f"section (one per {field.discriminator})"
    return Entry(parts, type_, _default(field), _range(field), " ".join(description.split()),
                 section=model is not None or type_.startswith("section"), doc=doc)


def _doc(model: Any) -> str:
    """A section class's own docstring as markdown paragraphs (``x`` -> `x`); "" without one."""
    text = model.__dict__.get("__doc__") if model is not None else None
    if not text:
        return ""
    paragraphs = inspect.cleandoc(text).replace("``", "`").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def _type(annotation: Any) -> str:
    """A readable type: int, float, str, bool, list[str], one of {a, b}, section; `or null` when optional."""
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if _is_model(annotation):
        return "section"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of {" + ", ".join(str(a) for a in args) + "}"
    if origin in (Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        text = " or ".join(_type(a) for a in kept)
        return f"{text} or null" if len(kept) < len(args) else text
    if origin is list:
        return f"list[{_type(args[0])}]"
    if origin is dict:
        return f"dict[{_type(args[0])}, {_type(args[1])}]"
    if origin is tuple:
        return "[" + ", ".join(_type(a) for a in args) + "]"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    return _yaml(field.get_default(call_default_factory=True))


def _yaml(value: Any) -> str:
    """A default as it would be written in YAML (flow style); an unset section is `{}` (all its defaults)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, BaseModel):
        kind = getattr(value, "kind", None)
        return f"{{kind: {kind}}}" if "kind" in type(value).model_fields and kind is not None else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return value if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_./${}-]*", value) else json.dumps(value)
    return str(value)


def _range(field: FieldInfo) -> str:
    """The constraints in a field's metadata: [0, 1), > 0, length >= 1, pattern ...; "" without any."""
    bound: dict[str, Any] = {}
    extra = []
    for m in field.metadata:
        for attr in ("ge", "gt", "le", "lt"):
            if getattr(m, attr, None) is not None:
                bound[attr] = getattr(m, attr)
        if getattr(m, "min_length", None) is not None:
            extra.append(f"length >= {m.min_length}")
        if getattr(m, "max_length", None) is not None:
            extra.append(f"length <= {m.max_length}")
        if getattr(m, "pattern", None) is not None:
            extra.append(f"pattern {m.pattern}")
    low = ("[", bound["ge"]) if "ge" in bound else ("(", bound["gt"]) if "gt" in bound else None
    high = (bound["le"], "]") if "le" in bound else (bound["lt"], ")") if "lt" in bound else None
    if low and high:
        text = [f"{low[0]}{_yaml(low[1])}, {_yaml(high[0])}{high[1]}"]
    elif low:
        text = [f"{'>=' if low[0] == '[' else '>'} {_yaml(low[1])}"]
    elif high:
        text = [f"{'<=' if high[1] == ']' else '<'} {_yaml(high[0])}"]
    else:
        text = []
    return "; ".join(text + extra)


# --------------------------------------------------------------------------- the markdown page


def render() -> str:
    """The text of docs/recipe_reference.md."""
    all_entries = entries()
    top = [e for e in all_entries if len(e.parts) == 1]
    lines = [
        "# Recipe reference",
        "",
        f"Generated from the recipe schema (`rlhf/config/`) by `{REGENERATE}`; do not edit by hand. "
        "`rlhf explain KEY` prints one entry, `rlhf explain SECTION` the keys under a section.",
        "",
        "A key path names where a key sits in the recipe YAML: `rollout.max_new_tokens` is `max_new_tokens:` under "
        "`rollout:`. `[]` is any item of a list (`rewards[].plugin`; an override on the command line writes "
        "`rewards.0.plugin=...`) and `<name>` any key of a mapping (`weighting.schedules.<name>.end`). The "
        "`objective` section takes different keys for each `objective.kind`: one table per kind. A section's "
        "default `{}` means every key under it at its default; a range `[a, b)` includes a and excludes b.",
        "",
        "| section | what it holds |",
        "|---|---|",
        *(f"| [{e.path}](#{e.path}) | {_cell(e.description)} |" for e in top),
    ]
    for e in top:
        lines += ["", f"## {e.path}", ""]
        lines += [_escape(e.doc or e.description), ""]
        under = [x for x in all_entries if x.parts[0] == e.parts[0] and len(x.parts) > 1]
        kinds = list(dict.fromkeys(x.kind for x in under if x.kind))
        if not kinds:
            lines += _table(under or [e])
            continue
        lines += _table([x for x in under if x.kind is None])
        for k in kinds:
            mine = [x for x in under if x.kind == k]
            lines += ["", f"### {e.path}, kind: {k}", ""]
            model_doc = _kind_doc(e.path, k)
            if model_doc:
                lines += [_escape(model_doc), ""]
            lines += _table(mine)
    return "\n".join(lines) + "\n"


def _kind_doc(section: str, kind: str) -> str:
    """The docstring of one kind's model in a union section (``objective``); "" without one."""
    field = Recipe.model_fields.get(section)
    models, _ = _model_of(field.annotation) if field is not None else (None, "")
    tag = field.discriminator if field is not None and isinstance(field.discriminator, str) else "kind"
    return next((_doc(m) for m in models if m.model_fields[tag].default == kind), "") if isinstance(models, tuple) \
        else ""


def _table(rows: list[Entry]) -> list[str]:
    out = ["| key | type | default | range | description |", "|---|---|---|---|---|"]
    for e in rows:
        out.append(f"| `{_code(e.key)}` | `{_code(e.type)}` | `{_code(e.default)}` | "
                   f"{('`' + _code(e.range) + '`') if e.range else ''} | {_cell(e.description)} |")
    return out


def _code(text: str) -> str:
    return text.replace("|", "\\|")


def _escape(text: str) -> str:
    """Markdown-safe prose: `<tag>` would be read as HTML."""
    return re.sub(r"<(?=[A-Za-z/])", "&lt;", text)


def _cell(text: str) -> str:
    return _escape(text).replace("|", "\\|")


# --------------------------------------------------------------------------- rlhf explain


def _split(query: str) -> list[str]:
    q = re.sub(r"\[kind=([^\]]+)\]", r".kind=\1", query.strip()).replace("[]", ".[]")
    return [p for p in q.split(".") if p]


def _ends(parts: tuple[str, ...], q: list[str], i: int = 0, j: int = 0) -> Iterator[int]:
    """Each i such that the query q matches parts[:i] (a kind qualifier may be left out or written bare)."""
    if j == len(q):
        yield i
        return
    if i == len(parts):
        return
    p, s = parts[i], q[j]
    if p.startswith("kind="):
        if s in (p, p[5:]):
            yield from _ends(parts, q, i + 1, j + 1)
        yield from _ends(parts, q, i + 1, j)
    elif s == p or (p == "[]" and s.isdigit()) or p == "<name>":
        yield from _ends(parts, q, i + 1, j + 1)


def lookup(query: str) -> tuple[list[Entry], list[Entry]]:
    """(the entries the query names, the entries under it): ``rollout.max_new_tokens`` names one key,
    ``objective.clip_eps`` one per objective kind, ``rollout.vllm`` a section and the keys under it."""
    q = _split(query)
    named, under = [], []
    for e in entries():
        ends = set(_ends(e.parts, q)) if q else {0}
        if len(e.parts) in ends:
            named.append(e)
        elif ends:
            under.append(e)
    return named, under


def _merged(found: list[Entry]) -> list[tuple[Entry, list[str]]]:
    """Entries that differ only in their objective kind, once each with their kinds."""
    groups: dict[tuple, tuple[Entry, list[str]]] = {}
    for e in found:
        sig = (e.key, e.type, e.default, e.range, e.description)
        groups.setdefault(sig, (e, []))[1].append(e.kind or "")
    return list(groups.values())


def _block(e: Entry, kinds: list[str]) -> str:
    head = e.key if len(kinds) > 1 or not kinds[0] else e.path
    if len(kinds) > 1:
        head += f"  (objective kinds: {', '.join(kinds)})"
    lines = [head, f"  type:     {e.type}", f"  default:  {e.default}"]
    if e.range:
        lines.append(f"  range:    {e.range}")
    lines.append(_wrap(e.description))
    if e.doc and e.doc.split("\n\n")[0] != e.description:
        lines += ["", _wrap(e.doc)]
    return "\n".join(lines)


def _wrap(text: str) -> str:
    """Paragraphs wrapped at 100 columns, indented by two spaces."""
    return "\n\n".join(textwrap.fill(p, 100, initial_indent="  ", subsequent_indent="  ") for p in text.split("\n\n"))


def _listing(found: list[Entry]) -> str:
    rows = []
    for e, kinds in _merged(found):
        name = e.key if len(kinds) > 1 or not kinds[0] else e.path
        rows.append((name, e.type, "required" if e.default == "required" else f"default {e.default}"))
    width = min(max(len(r[0]) for r in rows), 48)
    return "\n".join(f"  {n:<{width}}  {t}, {d}" for n, t, d in rows)


def explain(query: str | None, out: Any = None, err: Any = None) -> int:
    """`rlhf explain [KEY]`: print a key's type, default, range and description, or a section's keys; exit 2 with
    the closest keys for an unknown one."""
    out, err = out or sys.stdout, err or sys.stderr
    if not query:
        print("recipe sections (rlhf explain SECTION lists its keys; docs/recipe_reference.md has them all):",
              file=out)
        print(_listing([e for e in entries() if len(e.parts) == 1]), file=out)
        return 0
    named, under = lookup(query) if _split(query) else ([], [])  # dots only ('.', '..'): no key
    if not named and not under:
        print(f"error: unknown recipe key '{query}'{_suggest(query)}", file=err)
        return 2
    blocks = [_block(e, kinds) for e, kinds in _merged(named)]
    kinds = list(dict.fromkeys(e.kind for e in under if e.kind))
    if len(kinds) > 1 and any(e.kind is None for e in under):  # the union itself: its tag, then one kind at a time
        under = [e for e in under if e.kind is None]
        blocks.append(f"each kind takes keys of its own: `rlhf explain {query}[kind=K]` (or {query}.K) lists them; "
                      f"K is one of {', '.join(kinds)}")
    last = _split(query)[-1]
    if not named and len(kinds) == 1 and last in (kinds[0], f"kind={kinds[0]}"):  # one objective kind
        doc = _kind_doc(_split(query)[0], kinds[0])
        blocks.append(f"{_split(query)[0]}, kind: {kinds[0]}" + (f"\n{_wrap(doc)}" if doc else ""))
    if under:
        where = "keys under it" if named or blocks else f"keys under '{query}'"
        blocks.append(f"{where}:\n{_listing(under)}")
    print("\n\n".join(blocks), file=out)
    return 0


def _suggest(query: str) -> str:
    all_entries = entries()
    keys = list(dict.fromkeys(k for e in all_entries for k in (e.key, e.path)))
    close = difflib.get_close_matches(query.strip(), keys, n=3, cutoff=0.6)
    if not close:  # a bare key name: the paths that end with it
        last = _split(query)[-1:] or [""]
        close = list(dict.fromkeys(e.key for e in all_entries if e.parts[-1] == last[0]))[:5]
    inside = [e for e in all_entries if e.parts[0] == (_split(query) or [""])[0]]
    if not close and inside:  # a known section, a misspelt key under it
        leaf = difflib.get_close_matches(_split(query)[-1], [e.parts[-1] for e in inside], n=1)
        close = list(dict.fromkeys(e.key for e in inside if leaf and e.parts[-1] == leaf[0]))[:5]
    if not close:
        return "; `rlhf explain` lists the sections"
    return "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--write"]):
        print(f"usage: python -m rlhf.config.reference [--write]   (--write: {DOC_PATH})", file=sys.stderr)
        return 2
    text = render()
    if argv:
        DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
        DOC_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {DOC_PATH} ({len(entries())} keys)")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
