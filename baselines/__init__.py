"""Baselines: controlled re-implementations and adapters for official releases."""
