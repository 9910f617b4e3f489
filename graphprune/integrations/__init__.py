"""Bridges to training loops graphprune does not own (optional extras)."""
