"""Evaluation metrics (CLIP-I/T, DINO, ID-Sim, IP-Sim, HPS, mechanism metrics)."""
