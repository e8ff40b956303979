"""Clients of other people's services, each behind a small interface with a local stand-in."""
