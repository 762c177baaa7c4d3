"""Docs that run: README.md, the shell examples, docs/cli.md and examples/ checked against the code."""
