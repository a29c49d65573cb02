"""Recipe configuration: schema (strict pydantic models) and loading (extends, overrides, error messages)."""

from rlhf.config.load import RecipeError, load_recipe, recipe_to_yaml
from rlhf.config.schema import Recipe

__all__ = ["Recipe", "RecipeError", "load_recipe", "recipe_to_yaml"]
