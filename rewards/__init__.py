"""Reward plugins: the plugin API (api.py) and built-ins (verifiable/). Users write their own with @reward / @judge."""
