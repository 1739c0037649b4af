"""The command line: parsing and printing."""

from pyro_stcn.cli.main import main

__all__ = ["main"]
