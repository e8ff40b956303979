"""Shared pieces of every process: settings, tiers, the run model and error codes."""
