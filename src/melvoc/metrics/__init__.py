"""Objective vocoder metrics (placeholder, filled in below)."""
