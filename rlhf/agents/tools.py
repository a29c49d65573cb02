"""Built-in tool functions that environments can expose as tool methods: :func:`calculate` and :func:`run_python`.

Both take and return strings (what a tool call passes in and what the model is shown). An error the model caused
(a malformed expression) is a ``ValueError`` with a short message, for the environment to show as the tool's error
observation; a sandbox that cannot run at all (:class:`SandboxError`) is a fault of the machine, not of the
model, and should end the rollout rather than be shown to it.

Expose a wrapper rather than :func:`run_python` itself where the model should not choose the limits, since a
method's signature becomes the tool's schema::

    def python(self, code: str) -> str:
        \"\"\"Run a Python program and show its output.\"\"\"
        return run_python(code, timeout_s=5.0)

Floor 2: the standard library and :mod:`rlhf.sandbox`.
"""

from __future__ import annotations

import ast
import math
import operator
import signal

from rlhf import sandbox

__all__ = ["MAX_EXPONENT", "MAX_MAGNITUDE", "SandboxError", "calculate", "run_python"]

MAX_EXPONENT = 64  # |exponent| of ``**``
MAX_MAGNITUDE = 10**100  # every literal, intermediate and final result stays below this in absolute value
_MAX_EXPRESSION = 1000  # characters
_MAX_OUTPUT = 4000  # characters of a run_python result, the status line aside

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_WHAT = {ast.Name: "names", ast.Call: "function calls", ast.Attribute: "attributes", ast.Subscript: "subscripts",
         ast.Compare: "comparisons", ast.BoolOp: "and/or", ast.Lambda: "lambdas", ast.BitAnd: "&", ast.BitOr: "|",
         ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>", ast.MatMult: "@", ast.Invert: "~", ast.Not: "not"}


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression: int and float literals, ``+ - * / // % **``, unary ``+``/``-`` and
    parentheses. Anything else (names, calls, attributes, strings, comparisons, ...) raises ``ValueError``.

    Integers are exact (arbitrary size, below ``10**100``); ``/`` of two integers that divides exactly gives an
    integer (``6/3`` -> ``2``), otherwise a float. ``**`` takes exponents up to 64 in absolute value. The result is
    an integer string for an int, and for a float that is integral and below 2**53 (``2.5*2`` -> ``5``); any
    other float is shown with ``repr`` (``7/2`` -> ``3.5``, ``2**0.5`` -> ``1.4142135623730951``).
    """
    if not isinstance(expression, str):
        raise ValueError(f"calculate takes an expression string, got {type(expression).__name__}")
    if len(expression) > _MAX_EXPRESSION:
        raise ValueError(f"expression too long ({len(expression)} characters, at most {_MAX_EXPRESSION})")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise ValueError(f"not a valid arithmetic expression: {expression.strip()[:60]!r}") from None
    try:
        value = _eval(tree.body)
    except RecursionError:
        raise ValueError("expression too deeply nested") from None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ValueError(f"only numbers are allowed, not {node.value!r:.40}")
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        return _bounded(_apply(node.op, left, right))
    what = _WHAT.get(type(getattr(node, "op", None)) if isinstance(node, (ast.BinOp, ast.UnaryOp)) else type(node))
    if isinstance(node, ast.Name) or (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        what = f"{what} ({getattr(node, 'id', None) or node.func.id:.30})"
    raise ValueError(f"{what or type(node).__name__} not allowed: only numbers, + - * / // % ** and parentheses")


def _apply(op: ast.operator, left: int | float, right: int | float) -> int | float:
    try:
        if isinstance(op, ast.Pow):
            if abs(right) > MAX_EXPONENT:
                raise ValueError(f"exponent {right!r} too large (at most {MAX_EXPONENT} in absolute value)")
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if (abs(left).bit_length() - 1) * right > MAX_MAGNITUDE.bit_length():
                    raise ValueError("result too large (at least 10**100 in absolute value)")
        if isinstance(op, ast.Div) and isinstance(left, int) and isinstance(right, int) and right and not left % right:
            return left // right  # exact: keeps large integers exact
        result = _BINARY[type(op)](left, right)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except OverflowError:
        raise ValueError("result too large for a float") from None
    if isinstance(result, complex):
        raise ValueError("complex results are not allowed (a negative number to a fractional power)")
    return result


def _bounded(value: int | float) -> int | float:
    if isinstance(value, float) and math.isnan(value):
        raise ValueError("the result is not a number (nan)")
    if abs(value) >= MAX_MAGNITUDE:
        raise ValueError("result too large (at least 10**100 in absolute value)")
    return value


class SandboxError(RuntimeError):
    """The sandbox could not run the program (it refused on this kernel, or failed itself); never the model's
    doing, so not an observation to show it. The message is the sandbox's own (it names the opt-in, if any)."""


def run_python(code: str, timeout_s: float = 5.0, memory_mb: int = 256) -> str:
    """Run ``code`` in the platform sandbox (:func:`rlhf.sandbox.run_python`, default private view) and return what
    the tool result shows the model: stdout, then stderr if any, then a status line when the program did not exit
    with 0 (``[timeout] ...``, ``[memory] ...``, ``[killed] ...``, ``[exit code N]``); ``(no output)`` when there
    is nothing to show. Longer than 4,000 characters (status aside): the middle is cut out (head and tail kept, so
    a traceback's last line survives) with a ``[... N characters cut ...]`` line.

    ``timeout_s`` is both the wall-clock and the CPU limit; ``memory_mb`` is the address-space limit per process.
    Raises :class:`SandboxError` when the sandbox cannot run the program (e.g. the kernel refuses the private view):
    nothing runs unsandboxed.
    """
    if not isinstance(code, str):
        raise ValueError(f"run_python takes the program as a string, got {type(code).__name__}")
    limits = sandbox.SandboxLimits(cpu_seconds=timeout_s, wall_seconds=timeout_s, memory_mb=memory_mb,
                                   max_output_bytes=4 * _MAX_OUTPUT)
    result = sandbox.run_python(code, limits=limits)
    if result.status == "error":
        raise SandboxError(result.stderr.strip() or "the sandbox failed to run the program")
    body = result.stdout
    if result.stderr:
        body += ("" if not body or body.endswith("\n") else "\n") + result.stderr
    body = _cut(body.rstrip("\n"), _MAX_OUTPUT)
    status = _status(result, timeout_s, memory_mb)
    text = "\n".join(part for part in (body, status) if part)
    return text or "(no output)"


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    return f"{text[:head]}\n[... {len(text) - limit} characters cut ...]\n{text[-tail:]}"


def _status(result: sandbox.SandboxResult, timeout_s: float, memory_mb: int) -> str:
    if result.status == "ok":
        return ""
    if result.status == "timeout":
        return f"[timeout] the program was stopped after the {timeout_s:g} s limit"
    if result.status == "memory":
        return f"[memory] the program ran out of memory (limit {memory_mb} MB)"
    code = result.returncode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"[killed] the program was killed by {name}"
    return f"[exit code {code}]"
