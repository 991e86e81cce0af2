"""YAML only: published model specs, search presets, recipes. This module just locates them."""

from pathlib import Path

__all__ = ["EXPERIMENTS_DIR", "MODELS_DIR", "SEARCH_DIR", "RECIPES_DIR"]

EXPERIMENTS_DIR = Path(__file__).resolve().parent
MODELS_DIR = EXPERIMENTS_DIR / "models"
SEARCH_DIR = EXPERIMENTS_DIR / "search"
RECIPES_DIR = EXPERIMENTS_DIR / "recipes"
