"""Adapters that run the official releases (DreamO, UNO, XVerse) with their own weights, each in
its own environment (workflow/envs/<name>.yaml)."""
