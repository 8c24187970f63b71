"""The `sr-augment` command line: `main` parses and runs a command; `cache_commands` holds info, export, import
and merge; `demo` the offline demo."""

from sr_augment.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
