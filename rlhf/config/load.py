"""Load a recipe: YAML -> `extends:` merge -> `key.path=value` overrides -> strict validation.

    recipe = load_recipe("recipes/grpo_tiny_cpu.yaml", overrides=["train.lr=1e-4"])

Errors are :class:`RecipeError` with one line per problem, each naming the file, the key path and, for an
unknown key, the closest valid key.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from rlhf.config.schema import Recipe


class RecipeError(ValueError):
    """A recipe that cannot be used; the message lists every problem."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would silently keep the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' appears twice in the same section", key_node.start_mark
            )
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `over` into a copy of `base` (mappings merge, everything else replaces).

    A section that names a different `kind` (e.g. objective: {kind: modpo} over {kind: dpo, loss_type: ...})
    replaces the base section instead of merging into it: the old kind's keys mean nothing to the new one.
    """
    out = dict(base)
    for k, v in over.items():
        switches_kind = isinstance(v, dict) and isinstance(out.get(k), dict) and "kind" in v and \
            v["kind"] != out[k].get("kind", v["kind"])
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not switches_kind:
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _resolve_extends(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise RecipeError(f"{path}: `extends` cycle: {chain}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise RecipeError(f"{path}: `extends` must be a path to another recipe, got {parent!r}")
    base = _resolve_extends((path.parent / parent), (*seen, path))
    return deep_merge(base, data)


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.lr=1e-4' -> (['train', 'lr'], 1e-4). The value is parsed as YAML (numbers, lists, bools)."""
    if "=" not in item:
        raise RecipeError(f"override {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise RecipeError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = dict(data)
    for item in overrides:
        keys, value = parse_override(item)
        node: Any = out
        for i, k in enumerate(keys[:-1]):
            if isinstance(node, list):
                node = _list_item(node, k, item)
                continue
            nxt = node.get(k)
            if not isinstance(nxt, (dict, list)):
                nxt = {}
            node[k] = nxt = (dict(nxt) if isinstance(nxt, dict) else list(nxt))
            node = nxt
        last = keys[-1]
        if isinstance(node, list):
            node[_list_index(node, last, item)] = value
        else:
            node[last] = value
    return out


def _list_index(node: list, k: str, item: str) -> int:
    try:
        i = int(k)
        node[i]
        return i
    except (ValueError, IndexError):
        raise RecipeError(f"override {item!r}: {k!r} is not a valid index into a list of {len(node)}") from None


def _list_item(node: list, k: str, item: str) -> Any:
    i = _list_index(node, k, item)
    node[i] = dict(node[i]) if isinstance(node[i], dict) else node[i]
    return node[i]


# --------------------------------------------------------------------------- error messages


def _walk(loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, list[str]]:
    """Follow an error location through the schema: (model owning the last key, key path for humans).

    List indices stay in the path; discriminated-union tags (e.g. 'grpo' in objective.grpo.x) are dropped.
    """
    current: Any = Recipe
    shown: list[str] = []
    for part in loc[:-1]:
        if isinstance(part, int):
            shown.append(str(part))
            continue
        if isinstance(current, tuple):  # a union of models: `part` is the tag
            current = next((m for m in current if m.model_fields["kind"].default == part), None)
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None, [*shown, *map(str, loc[len(shown):])]
        field = current.model_fields.get(str(part))
        shown.append(str(part))
        current = None if field is None else _models_in(field.annotation)
    shown.append(str(loc[-1]) if loc else "")
    owner = current if isinstance(current, type) and issubclass(current, BaseModel) else None
    return owner, shown


def _models_in(annotation: Any) -> Any:
    """A model class, a tuple of model classes (a union), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    args = get_args(annotation)
    if get_origin(annotation) in (list, dict) and args:
        return _models_in(args[-1])
    models = tuple(a for a in args if isinstance(a, type) and issubclass(a, BaseModel))
    if len(models) == 1:
        return models[0]
    return models or None


def _format_error(err: dict[str, Any], source: str) -> str:
    loc = tuple(err.get("loc", ()))
    owner, parts = _walk(loc)
    path = ".".join(parts) or "(top level)"
    if err.get("type") == "extra_forbidden":
        hint = ""
        if owner is not None:
            valid = list(owner.model_fields)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys here: {', '.join(valid)}"
        return f"{source}: unknown key '{path}'{hint}"
    msg = err.get("msg", "invalid")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return f"{source}: {path}: {msg}{shown}"


def validate_dict(data: dict[str, Any], source: str) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        lines = [_format_error(err, source) for err in e.errors()]
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(lines)) from None


def load_recipe(path: str | os.PathLike[str], overrides: list[str] | None = None) -> Recipe:
    """Read, merge `extends`, apply overrides, validate, then resolve `${run.name}` in output_dir."""
    p = Path(path)
    data = _resolve_extends(p)
    data = apply_overrides(data, overrides or [])
    recipe = validate_dict(data, str(p))
    recipe.run.output_dir = recipe.run.output_dir.replace("${run.name}", recipe.run.name)
    _check_files(recipe, str(p))
    return recipe


def _check_files(recipe: Recipe, source: str) -> None:
    """Paths that look local must exist (hub ids such as 'org/name' are allowed)."""
    problems = []
    for key, value in (
        ("model.path", recipe.model.path),
        ("model.tokenizer", recipe.model.tokenizer),
        ("data.train_path", recipe.data.train_path if recipe.data.source != "hf" else None),
        ("data.eval_path", recipe.data.eval_path if recipe.data.source != "hf" else None),
    ):
        if value and _looks_local(value, key) and not Path(value).expanduser().exists():
            problems.append(f"{source}: {key}: path '{value}' does not exist")
    if problems:
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(problems))


def _looks_local(value: str, key: str) -> bool:
    """Data files are always local; a model is local when it is written as a path ('/x', './x', '~/x', 'a/b/c')
    -- 'gpt2' or 'org/name' that do not exist here are hub ids."""
    if key.startswith("data."):
        return True
    return value.startswith(("/", "./", "../", "~")) or value.count("/") > 1


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
