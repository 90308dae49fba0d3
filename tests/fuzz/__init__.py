"""The fuzz suite of the public surface (issue 15): bad and unusual arguments for every public loader, kernel
wrapper, layer, model entry point and CLI command, each judged in a worker subprocess (harness.py)."""
