"""Recipes by name: the config's ``recipe`` key picks a class registered here."""

from __future__ import annotations

__all__ = ["RECIPES", "get_recipe", "register_recipe"]

#: recipe name -> Recipe subclass
RECIPES = {}


def register_recipe(cls):
    """Make ``recipe: <cls.name>`` in a config train with ``cls`` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}.name must be set to register it")
    RECIPES[cls.name] = cls
    return cls


def get_recipe(name):
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; registered: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]
