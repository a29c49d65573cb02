"""Load a recipe: YAML -> `extends:` merge -> `key.path=value` overrides -> strict validation.

    recipe = load_recipe("recipes/grpo_tiny_cpu.yaml", overrides=["train.lr=1e-4"])

Errors are :class:`RecipeError` with one line per problem, each naming the file, the key path and, for an
unknown key, the closest valid key.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from rlhf.config.schema import Recipe


class RecipeError(ValueError):
    """A recipe that cannot be used; the message lists every problem."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would silently keep the last), and reports a
    value it cannot build as a YAML error at its line (PyYAML's own constructors raise ValueError, KeyError or
    AttributeError for e.g. ``!!int abc``, ``!!bool x``, ``!!timestamp 1``, ``2020-13-45`` or a 5000-digit integer).
    """

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as e:  # noqa: BLE001 - re-raised as a YAML error at the node's line
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot build the {node.tag.rsplit(':', 1)[-1]} value {_short_repr(node.value, 60)}: "
                f"{_clip(str(e), 200)}", node.start_mark
            ) from None


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"a key must be a scalar, got {type(key).__name__}", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' appears twice in the same section", key_node.start_mark
            )
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str) -> Any:
    """YAML with the strict loader: raises YAMLError, or RecursionError for nesting deeper than Python's stack."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8-sig") if path.is_file() else None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (OSError, ValueError) as e:  # permissions, a name too long, a NUL byte in the path
        raise RecipeError(f"{path}: cannot read the recipe file: {e}") from None
    if text is None:
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = _parse_yaml(text)
    except RecursionError:
        raise RecipeError(f"{path}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {_clip(str(e), 500)}") from None
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
    try:
        path = path.resolve()
    except (OSError, ValueError, RuntimeError) as e:  # a NUL byte, a symlink loop
        where = f"{seen[-1]}: extends" if seen else "recipe"
        raise RecipeError(f"{where}: cannot use path {str(path)!r}: {e}") from None
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise RecipeError(f"{path}: `extends` cycle: {chain}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise RecipeError(f"{path}: `extends` must be a path to another recipe, got {_short_repr(parent)}")
    target = path.parent / parent
    try:
        base = _resolve_extends(target, (*seen, path))
    except RecipeError as e:
        if str(path) in str(e):
            raise
        raise RecipeError(f"{e} (named by `extends: {parent}` in {path})") from None
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
    except Exception:  # noqa: BLE001 - not YAML, or a value PyYAML cannot build (!!bool x, 2020-13-45): keep the text
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
    """The i-th item, copied so the override does not touch shared data; a scalar becomes a mapping (as a scalar
    under a mapping key does) since the override goes deeper."""
    i = _list_index(node, k, item)
    node[i] = dict(node[i]) if isinstance(node[i], dict) else list(node[i]) if isinstance(node[i], list) else {}
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
    if err.get("type") == "union_tag_not_found":  # e.g. an override objective.x=1 on a recipe without objective:
        tag = str(err.get("ctx", {}).get("discriminator", "kind")).strip("'")
        msg += f"; set {path}.{tag}"
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {_short_repr(got)})"
    return f"{source}: {path}: {msg}{shown}"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else f"{text[: n - 3]}..."


def _short_repr(value: Any, n: int = 120) -> str:
    """repr() for a message: clipped, and safe for ints past Python's 4300-digit str() limit."""
    try:
        return _clip(repr(value), n)
    except ValueError:
        return f"<{type(value).__name__} too large to print>"


def validate_dict(data: dict[str, Any], source: str) -> Recipe:
    try:
        raw = _raw_problems(data)
        if raw:
            raise RecipeError("invalid recipe:\n  " + "\n  ".join(f"{source}: {key}: {why}" for key, why in raw))
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        lines = [_format_error(err, source) for err in e.errors()]
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(lines)) from None
    except RecursionError:
        raise RecipeError(f"invalid recipe:\n  {source}: nested too deeply") from None
    problems = [f"{source}: {key}: {problem}" for key, problem in _unusable_numbers(recipe)]
    if problems:
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(problems))
    return recipe


def _raw_problems(node: Any, path: str = "", open_ids: frozenset[int] = frozenset()) -> list[tuple[str, str]]:
    """(key path, problem) for what must not reach validation: a list/mapping that contains itself (YAML
    ``&a [*a]``; a shared value that is not its own ancestor is fine) and an integer past 64 bits (pydantic, torch
    and json cannot take it, and past 4300 digits not even str() can). The first problem found, or none."""
    if isinstance(node, int) and not isinstance(node, bool) and not -(2**63) <= node < 2**63:
        return [(path or "(top level)", f"must fit in 64 bits (got a {node.bit_length()}-bit integer)")]
    if not isinstance(node, (dict, list)):
        return []
    if id(node) in open_ids:
        return [(path, "contains itself (a YAML alias inside its own anchor); a recipe must be a tree")]
    inner = open_ids | {id(node)}
    for k, v in (node.items() if isinstance(node, dict) else enumerate(node)):
        found = _raw_problems(v, f"{path}.{k}" if path else str(k), inner)
        if found:
            return found
    return []


def _unusable_numbers(node: Any, path: str = "") -> list[tuple[str, str]]:
    """(key path, problem) for every NaN or infinite float in the validated recipe (pydantic lets them through
    where a field has no bound), and every integer past 64 bits (e.g. ``seed: 1e30`` became one). Plugin ``args``
    are the plugin's business and are not walked."""
    if isinstance(node, float):
        return [] if math.isfinite(node) else [(path, f"must be a finite number (got {node})")]
    if isinstance(node, int) and not isinstance(node, bool) and not -(2**63) <= node < 2**63:
        return [(path, f"must fit in 64 bits (got a {node.bit_length()}-bit integer)")]
    if isinstance(node, BaseModel):
        items = [(k, getattr(node, k)) for k in type(node).model_fields if k != "args"]
    elif isinstance(node, (list, tuple)):
        items = list(enumerate(node))
    else:
        return []
    return [bad for k, v in items for bad in _unusable_numbers(v, f"{path}.{k}" if path else str(k))]


def load_recipe(path: str | os.PathLike[str], overrides: list[str] | None = None) -> Recipe:
    """Read, merge `extends`, apply overrides, validate, then resolve `${run.name}` in output_dir."""
    p = Path(path)
    data = _resolve_extends(p)
    data = apply_overrides(data, overrides or [])
    recipe = validate_dict(data, str(p))
    recipe.run.output_dir = recipe.run.output_dir.replace("${run.name}", recipe.run.name)
    _check_files(recipe, str(p))
    _check_context(recipe, str(p))
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
        if not value or not _looks_local(value, key):
            continue
        try:
            exists = Path(value).expanduser().exists()
        except (OSError, ValueError, RuntimeError) as e:  # a name too long, '~nosuchuser/...'
            problems.append(f"{source}: {key}: cannot use path {_short_repr(value)}: {e}")
            continue
        if not exists:
            problems.append(f"{source}: {key}: path {value!r} does not exist")
    if problems:
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(problems))


def _model_context(recipe: Recipe) -> tuple[int, str] | None:
    """(context length, where it comes from) of the recipe's model, when known without loading it: model.tiny, or
    a local model directory's config.json. None for hub ids and unreadable configs (the model load reports those)."""
    if recipe.model.tiny is not None:
        return recipe.model.tiny.max_position_embeddings, "model.tiny.max_position_embeddings"
    path = Path(recipe.model.path or "").expanduser() / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RuntimeError):
        return None
    for key in ("max_position_embeddings", "n_positions"):
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, f"{key} in {path} (model.path)"
    return None


def _check_context(recipe: Recipe, source: str) -> None:
    """The longest sequence a step builds must fit the model's positions: prompt + completion for on-policy
    objectives, objective.max_length for preference pairs; and rollout.vllm.max_model_len when it is set."""
    from rlhf.config.registry import capabilities

    rollouts = capabilities(recipe.objective).rollouts
    if not rollouts:  # fixed rows (preference pairs, step-labelled solutions) of at most objective.max_length
        need, what = recipe.objective.max_length, f"objective.max_length = {recipe.objective.max_length}"
    else:
        d, r = recipe.data, recipe.rollout
        need = d.max_prompt_tokens + r.completion_tokens
        budget = "rollout.agent.max_tokens" if r.completion_tokens != r.max_new_tokens else "rollout.max_new_tokens"
        what = f"data.max_prompt_tokens ({d.max_prompt_tokens}) + {budget} ({r.completion_tokens}) = {need}"
    limits = []
    context = _model_context(recipe)
    if context is not None:
        limits.append((context[0], f"the model's context ({context[1]} = {context[0]})"))
    mml = recipe.rollout.vllm.max_model_len
    if rollouts and recipe.rollout.engine == "vllm" and mml is not None:
        limits.append((mml, f"rollout.vllm.max_model_len = {mml}"))
    problems = [f"{source}: {what} tokens do not fit {where}; shorten the prompt/completion budget or use a model "
                f"with a longer context" for limit, where in limits if need > limit]
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
