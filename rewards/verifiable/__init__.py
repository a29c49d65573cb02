"""Built-in verifiable rewards: math_answer, exact_match, regex_format, length_penalty (registered in rewards.builtins)."""
