"""The `oslira` command line and the embedded dev stack."""
