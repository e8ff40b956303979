"""Schema, connection pools and the SQL of each aggregate (accounts, credits, analyses, ...)."""
