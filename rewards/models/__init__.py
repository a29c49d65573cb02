"""Model-based scorers (reward models, LLM judges, PRMs): to come; the class-scorer protocol is in rewards.api."""
