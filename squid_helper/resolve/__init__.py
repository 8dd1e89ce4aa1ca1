"""Choosing a mirror for a repo path: mirror lists, surveys, health, probes."""
