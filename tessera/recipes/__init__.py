"""Recipes: one file per task, read top to bottom (setup, loop, evaluate, save), plus the CLI verbs of each part."""
