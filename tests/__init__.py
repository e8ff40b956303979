"""The test suite: real PostgreSQL, a real Temporal dev server, real provider SDKs."""
