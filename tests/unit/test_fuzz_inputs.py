"""Bad input, fuzzed: recipe YAML, `extends:`, overrides, jsonl/parquet prompt data and preference data.

Property: a loader returns its result or raises the project's own error (RecipeError, DataLoadError,
ModelLoadError) with a message that names the file and the key / line / row at fault -- never a raw exception
from yaml, json, pyarrow or a KeyError/TypeError from inside. Below the fuzzers are concrete checks that the
common mistakes give a message a user can act on.

Run: pytest tests/unit/test_fuzz_inputs.py -q      (~25 s on 2 cores; FUZZ_SCALE=20 for a long hunt)
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import yaml  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rlhf.config import Recipe, RecipeError, load_recipe, recipe_to_yaml  # noqa: E402
from rlhf.config.schema import DataConfig, ModelConfig  # noqa: E402
from rlhf.data import DataLoadError, load_rows  # noqa: E402
from rlhf.data.preference import load_preference_rows  # noqa: E402
from rlhf.models.load import ModelLoadError, resolve_model_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
VALID_TEXT = (ROOT / "recipes" / "grpo_tiny_cpu.yaml").read_text()
VALID = yaml.safe_load(VALID_TEXT)
SECTIONS = sorted(Recipe.model_fields)


def _fuzz(n: int) -> settings:
    """n examples (times $FUZZ_SCALE for a longer hunt); no example database is written to the checkout."""
    scale = float(os.environ.get("FUZZ_SCALE", "1"))
    return settings(max_examples=max(1, int(n * scale)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


_counter = itertools.count()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz").resolve()


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    """datasets (parquet loading) writes its arrow cache here instead of the user's ~/.cache."""
    import datasets.config

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
        yield


def _fresh(work: Path, suffix: str) -> Path:
    """A new file name per example (parquet goes through datasets, whose cache keys on the path)."""
    return work / f"f{next(_counter)}{suffix}"


# --------------------------------------------------------------------------- value strategies

NASTY_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from([-1, 0, 2**63, -(2**63) - 1, 10**30, 2**300]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", " ", "\t", "~", "${run.name}", "-1", "1e-4", "yes", "null", "x" * 2000, "a\x00b",
                     "../../etc", "~nosuchuser/x", "./no/such/dir", "a" * 5000]),
    st.text(max_size=20),
)
NASTY = st.recursive(
    NASTY_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5,
)
# text as a user might type it after `key=` or `key:` (YAML parses it, or fails to)
RAW_VALUES = st.sampled_from(["", "[", "{", "[" * 600, "9" * 5000, "0x" + "f" * 5000, "2020-13-45", "!!binary ===",
                              "{[1]: 2}", "!!set {a, b}", ".nan", ".inf", "-.inf", "~", "a\x00b", "&a [*a]", "*a",
                              "!!python/object:os.system x", "=", "-1", "1e999"])


def _paths(node, prefix=()):
    """Every key path of a nested dict/list (list items by index)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield (*prefix, k)
        yield from _paths(v, (*prefix, k))


VALID_PATHS = list(_paths(VALID))
SEGMENTS = sorted({str(k) for p in VALID_PATHS for k in p})


def _get_parent(data, path):
    node = data
    for k in path[:-1]:
        node = node[k]
    return node


@st.composite
def mutated_recipe(draw):
    """The demo recipe with 1-4 structural mutations, dumped to YAML (shared objects become anchors/aliases)."""
    data = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(data))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        try:
            parent = _get_parent(data, path)
        except (KeyError, IndexError, TypeError):
            continue
        op = draw(st.sampled_from(["delete", "replace", "insert"]))
        if op == "delete":
            del parent[path[-1]]
        elif op == "replace":
            parent[path[-1]] = draw(NASTY)
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(NASTY)
    shared = draw(st.sampled_from([None, "alias", "recurse", "recurse_args"]))
    if shared == "alias":  # one section reused as another: yaml writes &id001 / *id001
        a, b = draw(st.sampled_from(SECTIONS)), draw(st.sampled_from(SECTIONS))
        if a in data:
            data[b] = data[a]
    elif shared == "recurse" and isinstance(data.get("rewards"), list):
        data["rewards"].append(data["rewards"])  # a list containing itself
    elif shared == "recurse_args" and isinstance(data.get("rewards"), list) and data["rewards"] \
            and isinstance(data["rewards"][0], dict):
        loop: list = [1]
        loop.append(loop)
        data["rewards"][0]["args"] = {"x": loop}  # plugin args are free-form: pydantic would accept the loop
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# YAML scalars that parse but that PyYAML cannot construct (ValueError, KeyError, AttributeError -- not YAMLError)
UNBUILDABLE = st.sampled_from(["9" * 5000, "2020-13-45", "2020-02-30 25:61:00", "!!int abc", "!!float x",
                               "!!bool x", "!!timestamp 1"])


@st.composite
def text_mutated_recipe(draw):
    """Line-level damage to the demo recipe text: duplicated keys, tabs, truncation, stray YAML syntax."""
    lines = VALID_TEXT.splitlines()
    for _ in range(draw(st.integers(1, 2))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["dup", "tab", "cut", "junk", "anchor", "value", "value", "value"]))
        if op == "dup":
            lines.insert(i, lines[i])
        elif op == "tab":
            lines[i] = "\t" + lines[i]
        elif op == "cut":
            lines = lines[:i]
            break
        elif op == "junk":
            lines[i] += draw(st.sampled_from([" &a", " *a", " *nope", " !!python/name:os.system", " {", " ]", ": :",
                                              " !!binary ===", " !!timestamp 2020-13-45", " |", " ? [1]", " - x"]))
        elif op == "value":  # a scalar PyYAML cannot build, or cannot print back
            value = draw(st.one_of(RAW_VALUES, UNBUILDABLE))
            lines[i] = re.sub(r":\s+\S.*$", lambda _: ": " + value, lines[i])
        else:
            lines[i] = re.sub(r":\s+\S.*$", ": *a", lines[i]) if ":" in lines[i] else lines[i]
            lines.insert(0, "_anchor: &a {x: 1}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- recipe property


def check_recipe(path: Path, overrides: list[str] | None = None) -> Recipe | None:
    """load_recipe gives a Recipe, or a RecipeError whose message names a file or the override at fault."""
    try:
        recipe = load_recipe(path, overrides)
    except RecipeError as e:
        msg = str(e)
        assert msg.strip(), "empty RecipeError message"
        names_file = str(path) in msg or str(path.parent) in msg
        names_override = msg.startswith("override ")
        assert names_file or names_override, f"message names neither the file nor the override: {msg}"
        return None
    assert isinstance(recipe, Recipe)
    assert recipe_to_yaml(recipe)  # what `rlhf validate` prints
    return recipe


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    return path


@_fuzz(100)
@given(st.binary(max_size=400))
def test_fuzz_recipe_random_bytes(work, content):
    check_recipe(_write(work / "bytes.yaml", content))


YAML_ALPHABET = st.sampled_from(list(":-[]{}&*!|>'\"#%@`,?.~ \n\t\\") + list("abkxyz019") + ["model", "tiny", "\ufeff",
                                                                                                   "extends", "<<"])


@_fuzz(100)
@given(st.one_of(st.text(max_size=200), st.lists(YAML_ALPHABET, max_size=80).map("".join),
                 st.builds(lambda o, n, c: f"model: {o * n}{c * n}\n", st.sampled_from(["[", "{a: "]),
                           st.sampled_from([10, 600]), st.sampled_from(["]", "}"]))))
def test_fuzz_recipe_random_text(work, text):
    check_recipe(_write(work / "text.yaml", text))


@_fuzz(80)
@given(st.one_of(
    NASTY,
    st.dictionaries(st.sampled_from([*SECTIONS, "extends"]) | st.text(max_size=8), NASTY, max_size=6),
    st.fixed_dictionaries({"model": st.just({"tiny": {}})},
                          optional={s: st.dictionaries(st.sampled_from(SEGMENTS), NASTY, max_size=4)
                                    for s in SECTIONS if s != "model"}),
))
def test_fuzz_recipe_random_structures(work, data):
    check_recipe(_write(work / "struct.yaml", yaml.safe_dump(data, allow_unicode=True)))


@_fuzz(100)
@given(st.one_of(mutated_recipe(), text_mutated_recipe()))
def test_fuzz_recipe_mutations_of_a_valid_recipe(work, text):
    check_recipe(_write(work / "mutated.yaml", text))


EXTENDS_TARGET = st.one_of(
    st.sampled_from(["missing.yaml", "self.yaml", "cycle_a.yaml", "base.yaml", "", ".", "..", "/", "a\x00b",
                     "x" * 300, "../" * 50 + "nope.yaml", "bytes.yaml", "sub/", "~nosuchuser/r.yaml"]),
    NASTY,
)


@_fuzz(60)
@given(EXTENDS_TARGET, st.sampled_from(["", "run: {steps: 3}\n", "rollout: [1]\n", "extends: self.yaml\n"]))
def test_fuzz_recipe_extends(work, target, body):
    _write(work / "base.yaml", VALID_TEXT)
    _write(work / "bytes.yaml", b"\xff\xfe\x00model")
    _write(work / "cycle_a.yaml", "extends: cycle_b.yaml\n")
    _write(work / "cycle_b.yaml", "extends: self.yaml\n")
    (work / "sub").mkdir(exist_ok=True)
    text = yaml.safe_dump({"extends": target}, allow_unicode=True) + body
    path = _write(work / "self.yaml", text)
    recipe = check_recipe(path)
    if target == "base.yaml" and body == "run: {steps: 3}\n":
        assert recipe is not None and recipe.run.steps == 3


@st.composite
def override(draw):
    """key.path=value with real or odd paths (a real key path plus random segments, list indices out of range)."""
    segments = draw(st.lists(
        st.one_of(st.sampled_from(SEGMENTS), st.integers(-5, 12).map(str), st.text(max_size=6)), max_size=4))
    if draw(st.booleans()):
        segments = [*map(str, draw(st.sampled_from(VALID_PATHS))), *segments[:2]]
    key = draw(st.sampled_from([".", ".", ".", "..", " . "])).join(segments)
    if draw(st.integers(0, 9)) == 0:
        return key  # missing '='
    value = draw(st.one_of(st.text(max_size=30), RAW_VALUES,
                           NASTY.map(lambda v: yaml.safe_dump(v, default_flow_style=True).removesuffix("\n...\n")
                                     .strip())))
    return f"{key}={value}"


@_fuzz(100)
@given(st.lists(override(), min_size=1, max_size=4))
def test_fuzz_overrides(work, overrides):
    path = work / "valid.yaml"
    if not path.exists():
        _write(path, VALID_TEXT)
    check_recipe(path, overrides)


# --------------------------------------------------------------------------- data property

LINE_REFERENCE = re.compile(r"line \d+|row \d+")
FILE_LEVEL = ("no rows", "at least 2 rows", "not found; columns are", "cannot rename column", "cannot load parquet",
              "columns must differ")


def check_data_error(e: DataLoadError, path: Path) -> None:
    msg = str(e)
    assert str(path) in msg, f"message does not name the file: {msg}"
    assert LINE_REFERENCE.search(msg) or any(s in msg for s in FILE_LEVEL), f"no line/row in: {msg}"


def _row(draw, columns: tuple[str, ...]) -> dict:
    row = {c: draw(st.one_of(st.text(max_size=8), st.text(min_size=1, max_size=8), JSON_VALUES)) for c in columns}
    for _ in range(draw(st.integers(0, 2))):
        row[draw(st.text(max_size=6))] = draw(JSON_VALUES)
    if columns and draw(st.integers(0, 5)) == 0:
        del row[draw(st.sampled_from(columns))]
    return row


@st.composite
def jsonl_file(draw, columns: tuple[str, ...]) -> bytes:
    """Mostly well-formed rows, with bad lines mixed in: invalid JSON, non-objects, huge ints, deep nesting,
    invalid UTF-8, lone surrogates, blank lines, a BOM."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["row"] * 6 + ["garbage", "nonobject", "hugeint", "deep", "badutf8", "surrogate",
                                                   "blank"]))
        if kind == "row":
            lines.append(json.dumps(_row(draw, columns)).encode())
        elif kind == "garbage":
            lines.append(draw(st.text(max_size=30)).encode("utf-8", "surrogatepass"))
        elif kind == "nonobject":
            lines.append(json.dumps(draw(JSON_VALUES.filter(lambda v: not isinstance(v, dict)))).encode())
        elif kind == "hugeint":
            digits = draw(st.sampled_from([19, 20, 40, 4301, 6000]))
            lines.append(b'{"%s": "x", "n": 9%s}' % ((columns or ("prompt",))[0].encode(), b"9" * digits))
        elif kind == "deep":
            n = draw(st.sampled_from([10, 500, 5000, 50000]))
            lines.append(b'{"prompt": "x", "d": ' + b"[" * n + b"]" * n + b"}")
        elif kind == "badutf8":
            lines.append(b'{"prompt": "\xe9\xff"}')
        elif kind == "surrogate":
            lines.append(b'{"prompt": "a\\ud800b", "chosen": "\\udfff", "rejected": "r"}')
        else:
            lines.append(draw(st.sampled_from([b"", b"   ", b"\t"])))
    body = draw(st.sampled_from([b"\n", b"\r\n"])).join(lines)
    if lines and draw(st.booleans()):
        body += b"\n"
    if draw(st.integers(0, 4)) == 0:
        body = b"\xef\xbb\xbf" + body
    return body


@_fuzz(100)
@given(jsonl_file(("prompt",)), st.sampled_from([("prompt", "completion"), ("question", "completion"),
                                                   ("prompt", "prompt"), ("completion", "prompt")]))
def test_fuzz_jsonl_prompt_rows(work, content, columns):
    path = _write(work / "rows.jsonl", content)
    cfg = DataConfig(source="jsonl", train_path=str(path), prompt_column=columns[0], completion_column=columns[1])
    try:
        train, held = load_rows(cfg, seed=0)
    except DataLoadError as e:
        check_data_error(e, path)
        return
    assert train and held
    for row in train + held:
        assert isinstance(row["prompt"], str)
        row["prompt"].encode("utf-8")  # the tokenizer will get it


@_fuzz(100)
@given(jsonl_file(("prompt", "chosen", "rejected")))
def test_fuzz_jsonl_preference_rows(work, content):
    path = _write(work / "prefs.jsonl", content)
    try:
        rows = load_preference_rows(str(path))
    except DataLoadError as e:
        check_data_error(e, path)
        return
    assert rows
    for row in rows:
        for key in ("prompt", "chosen", "rejected"):
            assert isinstance(row[key], str)
            row[key].encode("utf-8")
        assert row["chosen"] != row["rejected"]


ARROW_COLUMN = st.sampled_from(["string", "int", "float", "list", "null", "bool", "binary", "struct"])


@st.composite
def parquet_file(draw, names: tuple[str, ...]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = draw(st.integers(0, 4))
    columns = {}
    for name in draw(st.lists(st.sampled_from([*names, "answer", "extra"]), unique=True, max_size=5)):
        kind = draw(ARROW_COLUMN)
        make = {
            "string": lambda: st.one_of(st.none(), st.text(max_size=6)),
            "int": lambda: st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
            "float": lambda: st.floats(),
            "list": lambda: st.lists(st.integers(0, 9), max_size=3),
            "null": lambda: st.none(),
            "bool": lambda: st.booleans(),
            "binary": lambda: st.binary(max_size=6),
            "struct": lambda: st.fixed_dictionaries({"a": st.integers(0, 9)}),
        }[kind]
        columns[name] = draw(st.lists(make(), min_size=n, max_size=n))
    buf = io.BytesIO()
    pq.write_table(pa.table(columns) if columns else pa.table({"_": pa.array([], pa.null())}), buf)
    data = bytearray(buf.getvalue())
    if draw(st.integers(0, 3)) == 0:  # damage: flipped bytes or a truncated file
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@_fuzz(25)
@given(parquet_file(("prompt", "completion")))
def test_fuzz_parquet_prompt_rows(work, hf_cache, content):
    path = _write(_fresh(work, ".parquet"), content)
    try:
        train, held = load_rows(DataConfig(source="parquet", train_path=str(path)), seed=0)
    except DataLoadError as e:
        check_data_error(e, path)
        return
    assert all(isinstance(r["prompt"], str) for r in train + held)


@_fuzz(25)
@given(parquet_file(("prompt", "chosen", "rejected")))
def test_fuzz_parquet_preference_rows(work, hf_cache, content):
    path = _write(_fresh(work, ".parquet"), content)
    try:
        rows = load_preference_rows(str(path))
    except DataLoadError as e:
        check_data_error(e, path)
        return
    assert all(isinstance(r[k], str) for r in rows for k in ("prompt", "chosen", "rejected"))


# --------------------------------------------------------------------------- messages a user can act on

BASE = """
model: {tiny: {hidden_size: 32, intermediate_size: 64, num_heads: 4, max_position_embeddings: 64}}
rewards:
  - {name: correct, plugin: math_answer}
data: {max_prompt_tokens: 16}
rollout: {prompts_per_step: 4, group_size: 4, max_new_tokens: 8}
train: {num_ranks: 2}
"""


def test_missing_model_path_names_the_key_and_the_path(tmp_path):
    missing = str(tmp_path / "no" / "such" / "model")
    p = _write(tmp_path / "r.yaml", BASE.replace(
        "tiny: {hidden_size: 32, intermediate_size: 64, num_heads: 4, max_position_embeddings: 64}",
        f"path: {missing}"))
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert f"model.path: path '{missing}' does not exist" in str(e.value) and str(p) in str(e.value)
    # a Recipe built in code skips load_recipe's file checks: resolving the model says the same before any actor
    with pytest.raises(ModelLoadError, match=rf"model\.path: '{re.escape(missing)}' .* does not exist"):
        resolve_model_dir(ModelConfig(path=missing), list, str(tmp_path), 0)
    with pytest.raises(ModelLoadError, match=r"model\.tokenizer: './no-tokenizer-here' .* does not exist"):
        resolve_model_dir(ModelConfig(path="org/model", tokenizer="./no-tokenizer-here"), list, str(tmp_path), 0)


def test_empty_dataset_names_the_file(tmp_path):
    for content in ("", "\n\n   \n"):
        path = _write(tmp_path / "empty.jsonl", content)
        with pytest.raises(DataLoadError, match=rf"data\.train_path: {re.escape(str(path))}: no rows"):
            load_rows(DataConfig(source="jsonl", train_path=str(path)), seed=0)
        with pytest.raises(DataLoadError, match=rf"{re.escape(str(path))}: no rows"):
            load_preference_rows(str(path))
    one = _write(tmp_path / "one.jsonl", '{"prompt": "a"}\n')
    with pytest.raises(DataLoadError, match=rf"{re.escape(str(one))}: need at least 2 rows .* set data.eval_path"):
        load_rows(DataConfig(source="jsonl", train_path=str(one)), seed=0)


def test_bad_lines_name_file_and_line(tmp_path):
    cases = {
        b'{"prompt": "a"}\n{"prompt": "\xe9"}\n': "line 2: not UTF-8 text",
        b'{"prompt": "a"}\n{"prompt": "b", "n": ' + b"9" * 5000 + b"}\n": "line 2: cannot read JSON",
        b'{"prompt": "a", "d": ' + b"[" * 100000 + b"]" * 100000 + b"}\n": "line 1: JSON nested too deeply",
        b'{"prompt": "a"}\n\n[1, 2]\n': "line 3: expected a JSON object per line, got list",
        b'{"prompt": "a"}\n{"prompt": "b\\ud800"}\n': r"row 1 \(line 2\), column 'prompt': text is not valid Unicode",
        b'{"prompt": "a"}\n{"prompt": 7}\n': r"row 1 \(line 2\) has prompt column 'prompt' = 7",
    }
    for content, expected in cases.items():
        path = _write(tmp_path / "bad.jsonl", content)
        with pytest.raises(DataLoadError, match=rf"{re.escape(str(path))}.*{expected}"):
            load_rows(DataConfig(source="jsonl", train_path=str(path)), seed=0)
    # a BOM and huge-but-readable integers are fine, and integers keep their value (pyarrow made them floats)
    path = _write(tmp_path / "ok.jsonl", b'\xef\xbb\xbf{"prompt": "a", "n": 123456789012345678901234567890}\n'
                                         b'{"prompt": "b"}\n')
    train, held = load_rows(DataConfig(source="jsonl", train_path=str(path)), seed=0)
    assert sorted((r["prompt"], r["n"]) for r in train + held) == [("a", 123456789012345678901234567890), ("b", None)]


def test_prompt_longer_than_the_context_names_both_numbers_and_keys(tmp_path):
    p = _write(tmp_path / "r.yaml", BASE.replace("max_prompt_tokens: 16", "max_prompt_tokens: 60"))
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert str(p) in msg
    assert "data.max_prompt_tokens (60) + rollout.max_new_tokens (8) = 68" in msg
    assert "model.tiny.max_position_embeddings = 64" in msg
    assert load_recipe(p, ["data.max_prompt_tokens=56"]).data.max_prompt_tokens == 56  # 56 + 8 fits exactly
    # a local model directory: its config.json says how long the context is
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 32}))
    p2 = _write(tmp_path / "r2.yaml", BASE.replace(
        "tiny: {hidden_size: 32, intermediate_size: 64, num_heads: 4, max_position_embeddings: 64}", f"path: {model}"))
    assert load_recipe(p2, ["rollout.max_new_tokens=16"]).model.path == str(model)  # 16 + 16 fits
    with pytest.raises(RecipeError, match=rf"= 33 tokens do not fit .*n_positions in {re.escape(str(model))}"):
        load_recipe(p2, ["rollout.max_new_tokens=17"])
    # preference objectives build prompt + completion up to objective.max_length
    pref = _write(tmp_path / "prefs.jsonl", '{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    with pytest.raises(RecipeError, match=r"objective.max_length = 128 tokens do not fit .*= 64"):
        load_recipe(p, ["objective={kind: dpo, max_length: 128, batch_size: 2}", "data.source=jsonl",
                        f"data.train_path={pref}"])
    # vLLM's max_model_len, when set, is a limit too
    with pytest.raises(RecipeError, match=r"= 24 tokens do not fit rollout.vllm.max_model_len = 16"):
        load_recipe(p, ["data.max_prompt_tokens=16", "rollout.engine=vllm", "rollout.vllm.max_model_len=16"])


def test_group_size_and_batch_mistakes_name_the_keys(tmp_path):
    p = _write(tmp_path / "r.yaml", BASE)
    with pytest.raises(RecipeError, match=r"objective grpo needs rollout.group_size >= 2"):
        load_recipe(p, ["rollout.group_size=1"])
    with pytest.raises(RecipeError, match=r"rollout.prompts_per_step \* rollout.group_size = 15 sequences per step "
                                          r"must be divisible by train.num_ranks \* objective.mini_batches = 2"):
        load_recipe(p, ["rollout.prompts_per_step=3", "rollout.group_size=5"])
    with pytest.raises(RecipeError, match=r"objective: Unable to extract tag .*; set objective.kind"):
        load_recipe(p, ["objective.mini_batches=16"])  # BASE has no objective section: the override makes one
    with pytest.raises(RecipeError, match=r"= 16 sequences .* objective.mini_batches = 32"):
        load_recipe(p, ["objective.kind=grpo", "objective.mini_batches=16"])  # fewer sequences than shards
    # a group larger than an engine's generate() batch is fine: the engine then generates one prompt's group per call
    assert load_recipe(p, ["rollout.group_size=16", "rollout.batch_size=4"]).rollout.group_size == 16


def test_non_finite_and_huge_numbers_are_rejected_with_the_key(tmp_path):
    p = _write(tmp_path / "r.yaml", BASE)
    for override, key in (("train.lr=.inf", "train.lr"), ("rewards.0.weight=.nan", "rewards.0.weight"),
                          ("rollout.temperature=.inf", "rollout.temperature")):
        with pytest.raises(RecipeError, match=rf"{re.escape(str(p))}: {re.escape(key)}: must be a finite number"):
            load_recipe(p, [override])
    with pytest.raises(RecipeError, match=r"run.seed: must fit in 64 bits \(got a 20000-bit integer\)"):
        load_recipe(p, ["run.seed=0x" + "f" * 5000])
    # plugin args belong to the plugin
    assert load_recipe(p, ["rewards.0.args={cap: .inf}"]).rewards[0].args["cap"] == float("inf")


def test_self_referencing_alias_is_an_error(tmp_path):
    p = _write(tmp_path / "r.yaml", BASE.replace("{name: correct, plugin: math_answer}",
                                                 "{name: correct, plugin: math_answer, args: {a: &x [1, *x]}}"))
    with pytest.raises(RecipeError, match=r"r.yaml: rewards.0.args.a.1: contains itself \(a YAML alias"):
        load_recipe(p)
    shared = _write(tmp_path / "s.yaml", BASE.replace("train: {num_ranks: 2}", "train: &t {num_ranks: 2}\n"
                                                      "_unused: *t"))
    with pytest.raises(RecipeError, match="unknown key '_unused'"):  # a shared (not circular) alias is fine
        load_recipe(shared)
