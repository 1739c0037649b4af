"""The command line: parsing and printing."""

from pyro_stcn.cli.commands import main

__all__ = ["main"]
