"""Agents: the Environment API (rlhf/agents/env.py), tool-call parsers (parsers.py), built-in tools (tools.py) and
built-in environments (envs.py). Floor 2: imports the standard library, rlhf.types and rlhf.sandbox only; the
rollout function that runs episodes is rlhf/rollout/agent.py.
"""

from rlhf.agents.env import AgentEnvError, Step, environment, list_environments, resolve_environment, tool_specs

__all__ = ["AgentEnvError", "Step", "environment", "list_environments", "resolve_environment", "tool_specs"]
