"""Subcommands of the nemocpu command (see nemocpu/cli.py)."""
