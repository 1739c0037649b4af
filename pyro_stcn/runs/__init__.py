"""Runs: the registry of model families, presets, a run's config built from settings,
and runs as a library (training one into its directory, loading and scoring it)."""

import pyro_stcn.runs.families  # noqa: F401  (registers the built-in model families, before anything reads them)
from pyro_stcn.runs.api import *  # noqa: F403
from pyro_stcn.runs.config import *  # noqa: F403
