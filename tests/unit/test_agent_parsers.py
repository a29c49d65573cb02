"""Tool-call parsers (rlhf/agents/parsers.py): the hermes and call formats, malformed calls as short errors,
arguments that are never evaluated, and the registry.

Run: pytest tests/unit/test_agent_parsers.py -q
"""

from __future__ import annotations

import pytest

from rlhf.agents.parsers import PARSERS, CallParser, HermesParser, Parsed, ToolCall, ToolParser, build_parser

SPECS = [
    {"type": "function", "function": {
        "name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]}}},
    {"type": "function", "function": {
        "name": "echo", "description": "Echo a text.",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}, "times": {"type": "integer",
                                                                                           "default": 1}},
                       "required": ["text"]}}},
]


def _one_error(parser: ToolParser, text: str) -> str:
    parsed = parser.parse(text)
    assert parsed.calls == () and len(parsed.errors) == 1, parsed
    assert len(parsed.errors[0]) < 200
    return parsed.errors[0]


# --------------------------------------------------------------------------- hermes


def test_hermes_one_call():
    text = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    assert HermesParser().parse(text) == Parsed((ToolCall("add", (), {"a": 1, "b": 2}, text),), ())


def test_hermes_several_calls_in_order_with_text_around_and_newlines_inside():
    text = ('Let me add.\n<tool_call>\n{"name": "add",\n "arguments": {"a": 1, "b": 2}}\n</tool_call>\nand\n'
            '<tool_call>{"name": "echo", "arguments": {"text": "<b>hi</b>"}}</tool_call> done')
    parsed = HermesParser().parse(text)
    assert parsed.errors == ()
    assert [(c.name, c.args, c.kwargs) for c in parsed.calls] == [("add", (), {"a": 1, "b": 2}),
                                                                   ("echo", (), {"text": "<b>hi</b>"})]
    assert parsed.calls[0].text.startswith("<tool_call>\n{") and parsed.calls[0].text.endswith("}\n</tool_call>")


def test_hermes_arguments_as_a_json_string_or_absent():
    parsed = HermesParser().parse('<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}</tool_call>'
                                  '<tool_call>{"name": "now"}</tool_call>')
    assert parsed.errors == ()
    assert [(c.name, c.kwargs) for c in parsed.calls] == [("add", {"a": 1, "b": 2}), ("now", {})]


def test_hermes_no_calls():
    assert HermesParser().parse("The answer is 3.") == Parsed((), ())
    assert HermesParser().parse("") == Parsed((), ())


@pytest.mark.parametrize("body,fragment", [
    ('{"name": "add", "arguments": {"a": 1,}}', "invalid JSON"),
    ("add(1, 2)", "invalid JSON"),
    ('{"arguments": {"a": 1}}', '"name"'),
    ('{"name": 3}', '"name"'),
    ('["add", 1]', "JSON object"),
    ('{"name": "add", "arguments": [1, 2]}', "must be a JSON object"),
    ('{"name": "add", "arguments": "a=1"}', "not valid JSON"),
    ('{"name": "add", "arguments": "[1, 2]"}', "must be a JSON object"),
])
def test_hermes_malformed_calls_give_one_short_error_with_a_valid_example(body, fragment):
    error = _one_error(HermesParser(), f"<tool_call>{body}</tool_call>")
    assert fragment in error and '<tool_call>{"name": "add", "arguments": {' in error


def test_hermes_opening_tag_without_closing_tag():
    parser = HermesParser()
    assert "no closing </tool_call>" in _one_error(parser, 'ok <tool_call>{"name": "add", "arguments": {}}')
    # an unclosed block followed by a good one: one error, then the call
    parsed = parser.parse('<tool_call>{"name": "x"<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>')
    assert [c.name for c in parsed.calls] == ["add"] and len(parsed.errors) == 1


def test_hermes_good_and_bad_calls_together():
    parsed = HermesParser().parse('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
                                  '<tool_call>{oops}</tool_call>'
                                  '<tool_call>{"name": "echo", "arguments": {"text": "x"}}</tool_call>')
    assert [c.name for c in parsed.calls] == ["add", "echo"] and len(parsed.errors) == 1


def test_hermes_stop_and_rendered_tools():
    parser = HermesParser()
    assert parser.stop == ("</tool_call>",) and parser.name == "hermes"
    rendered = parser.render_tools(SPECS)
    assert "<tools>" in rendered and '"name": "add"' in rendered and '"name": "echo"' in rendered
    assert "<tool_call>" in rendered
    assert parser.render_tools([]) == ""


# --------------------------------------------------------------------------- call


def test_call_positional_and_keyword_arguments():
    text = "<call>add(48213, 90872)</call>"
    assert CallParser().parse(text) == Parsed((ToolCall("add", (48213, 90872), {}, text),), ())
    parsed = CallParser().parse("<call> add(a=1, b=-2.5) </call>")
    assert parsed.calls[0].args == () and parsed.calls[0].kwargs == {"a": 1, "b": -2.5}


def test_call_literal_values_of_every_kind():
    text = """<call>f("s", 'q', [1, 2], {"k": (1, None)}, True, False, None, -3, 1e3, x={1})</call>"""
    parsed = CallParser().parse(text)
    assert parsed.errors == ()
    assert parsed.calls[0].args == ("s", "q", [1, 2], {"k": (1, None)}, True, False, None, -3, 1000.0)
    assert parsed.calls[0].kwargs == {"x": {1}}


def test_call_several_calls_in_order_with_text_around():
    text = "First <call>add(1, 2)</call> then\n<call>echo(text='</b>')</call> and <call>now()</call>."
    parsed = CallParser().parse(text)
    assert parsed.errors == ()
    assert [(c.name, c.args, c.kwargs) for c in parsed.calls] == [("add", (1, 2), {}), ("echo", (), {"text": "</b>"}),
                                                                   ("now", (), {})]
    assert parsed.calls[1].text == "<call>echo(text='</b>')</call>"


@pytest.mark.parametrize("body,fragment", [
    ("add(__import__('os').system('x'), 1)", "argument 1 of add is a call"),
    ("add(1, b=open('/etc/passwd').read())", "argument b of add is a call"),
    ("add(os.environ, 1)", "argument 1 of add is an attribute"),
    ("add(x, 1)", "argument 1 of add is a name"),
    ("add([1, y], 1)", "argument 1 of add is a name"),
    ("add(1 + 2, 1)", "argument 1 of add is an operation"),
    ("add(*[1, 2])", "starred"),
    ("add(**{'a': 1})", "**arguments"),
    ("os.system('x')", "bare tool name"),
    ("__import__('os').system('x')", "bare tool name"),
    ("tools['add'](1)", "bare tool name"),
    ("add(1, 2", "not valid Python"),
    ("add(1, 2); add(3)", "not valid Python"),
    ("add(a=1, a=2)", "given twice"),
    ("lambda: 1", "one call"),
    ("48213 + 90872", "one call"),
    ("", "not valid Python"),
])
def test_call_malformed_or_non_literal_calls_are_errors(body, fragment):
    error = _one_error(CallParser(), f"<call>{body}</call>")
    assert fragment in error and "<call>add(1, 2)</call>" in error


def test_call_arguments_are_never_evaluated(monkeypatch):
    import builtins

    fired = []
    monkeypatch.setattr(builtins, "_agent_parser_trap", lambda *a: fired.append(a), raising=False)
    for text in ("<call>add(_agent_parser_trap(1), 1)</call>", "<call>add(1, b=_agent_parser_trap(2))</call>",
                 "<call>_agent_parser_trap(3)</call>", "<call>add([_agent_parser_trap(4)][0], 1)</call>"):
        parsed = CallParser().parse(text)
        assert len(parsed.errors) == 1 or parsed.calls[0].name == "_agent_parser_trap", parsed
    assert fired == []


def test_call_opening_tag_without_closing_tag_and_overlong_calls():
    assert "no closing </call>" in _one_error(CallParser(), "<call>add(1, 2)")
    assert "too long" in _one_error(CallParser(), f"<call>add('{'x' * 30_000}')</call>")


def test_call_stop_and_rendered_tools():
    parser = CallParser()
    assert parser.stop == ("</call>",) and parser.name == "call"
    rendered = parser.render_tools(SPECS)
    assert "- add(a: int, b: int): Add two integers." in rendered
    assert "- echo(text: str, times: int = 1): Echo a text." in rendered
    assert "Example: <call>add(1, 1)</call>" in rendered
    example = rendered.rsplit("Example: ", 1)[1]
    assert parser.parse(example).calls[0].args == (1, 1)  # the example the model is shown parses
    assert parser.render_tools([]) == ""


# --------------------------------------------------------------------------- none and the registry


def test_none_parser_finds_nothing():
    parser = build_parser("none")
    assert parser.stop == () and parser.render_tools(SPECS) == ""
    assert parser.parse("<tool_call>{\"name\": \"add\"}</tool_call><call>add(1)</call>") == Parsed((), ())


def test_build_parser_and_unknown_names():
    assert set(PARSERS) == {"hermes", "call", "none"}
    for name in PARSERS:
        parser = build_parser(name)
        assert isinstance(parser, ToolParser) and parser.name == name
    with pytest.raises(ValueError, match=r"rollout\.agent\.tool_parser.*'json'.*call, hermes, none"):
        build_parser("json")


def test_bad_tool_specs_are_refused():
    with pytest.raises(ValueError, match="tool spec"):
        CallParser().render_tools([{"type": "function", "function": {"description": "no name"}}])
