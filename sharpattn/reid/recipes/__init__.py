"""Training recipes: one file per published method over the shared loop (see ``base.py``)."""

from .base import Recipe, build_optimizer
from .registry import RECIPES, get_recipe, register_recipe
from .san import SANRecipe, compute_loss
from .aaanet import AAANetOptions, AAANetRecipe

__all__ = ["AAANetOptions", "AAANetRecipe", "RECIPES", "Recipe", "SANRecipe", "build_optimizer", "compute_loss", "get_recipe",
           "register_recipe"]
