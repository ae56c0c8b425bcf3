"""Measure and record only: the C1 probe, C2 diversity runs, sharpness, statistics, random effects and
per-arm tables."""
