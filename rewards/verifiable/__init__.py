"""Built-in verifiable rewards: math_answer, exact_match, regex_format, length_penalty, overlong_penalty,
code_tests (registered in rewards.builtins)."""
