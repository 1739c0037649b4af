"""The package's layers, lowest first. A module may import from its own layer and the
layers below it, never from one above; ``tests/test_layering.py`` checks every import
of every module, and that no module imports itself through others (no import cycle).

- base: the data loaders and a helper for choosing by name;
- nets: networks and samplers, no Pyro sample site;
- inference: objectives, KL estimators, bounds' factors, schedules, hand-offs;
- models and guides: the Pyro models and guides (``models/`` and ``guides/`` at the top
  of the repository, installed as ``pyro_stcn.models`` and ``pyro_stcn.guides``);
- training and evaluation: the training loop and its callbacks, bounds, predictive
  checks, baselines, comparisons and plots (peers: a comparison trains, a training
  callback plots);
- runs: the registry of model families, presets, run configs, runs as a library, and
  the benchmarks (which build models from the registry);
- command line: parsing and printing.

The package itself (``pyro_stcn``) re-exports a few names lazily, so that importing a
low module does not import the whole library.
"""

LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["pyro_stcn.choices", "pyro_stcn.errors", "pyro_stcn.data", "pyro_stcn.architecture"]),
    ("nets", ["pyro_stcn.nets"]),
    ("inference", ["pyro_stcn.inference"]),
    ("models and guides", ["pyro_stcn.models", "pyro_stcn.guides"]),
    ("training and evaluation", ["pyro_stcn.training", "pyro_stcn.evaluation"]),
    ("runs", ["pyro_stcn.runs", "pyro_stcn.bench"]),
    ("command line", ["pyro_stcn.cli", "pyro_stcn.__main__"]),
]


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of a ``pyro_stcn`` module's layer; the package itself
    (its lazy re-exports) is above them all."""
    if module == "pyro_stcn":
        return len(LAYERS)
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise ValueError(f"{module} is in no layer of pyro_stcn.architecture.LAYERS; add it to one")
