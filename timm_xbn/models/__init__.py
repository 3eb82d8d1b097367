"""Registered XBNBlock models (importing this module registers them with timm)."""
