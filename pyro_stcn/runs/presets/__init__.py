"""Paper experiments as presets: each is the set of ``run.py train`` flags that sets
up one experiment of the papers (data, model, likelihood, optimiser, schedule), kept
in a small file beside the papers' own settings.

A preset supplies defaults only: a flag given on the command line wins. Each paper
preset has a CPU-sized variant, ``NAME-cpu``, that trains in minutes on 2 cores on a
data set shipped in a package; the README's figures come from those.
"""

from pyro_stcn.runs.presets import blizzard_ms_stcn_fw200, iamondb_stcn_dense, mnist_stcn_dense, timit_stcn
from pyro_stcn.runs.registry import NETWORK_FLAGS, family_of

PRESETS: dict[str, dict] = {  # name -> {argparse dest: value}
    "iamondb-stcn-dense": iamondb_stcn_dense.PAPER,
    "iamondb-stcn-dense-cpu": iamondb_stcn_dense.CPU,
    "blizzard-ms-stcn-fw200": blizzard_ms_stcn_fw200.PAPER,
    "blizzard-ms-stcn-fw200-cpu": blizzard_ms_stcn_fw200.CPU,
    "timit-stcn": timit_stcn.PAPER,
    "timit-stcn-cpu": timit_stcn.CPU,
    "mnist-stcn-dense": mnist_stcn_dense.PAPER,
    "mnist-stcn-dense-cpu": mnist_stcn_dense.CPU,
}


def as_flags(preset: dict) -> str:
    """The preset written as the command-line flags it stands for."""
    words = []
    for dest, value in preset.items():
        flag = "--" + dest.replace("_", "-")
        if value is False:  # a switch the preset leaves off
            continue
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words += [flag, ",".join(str(v) for v in value)]
        else:
            words += [flag, str(value)]
    return " ".join(words)


# A preset's settings that belong to its own data: left out when you pick other data.
DATA_SPECIFIC = ["fw", "binarise", "dequantise", "split_lists", "likelihood", "components", "crop"]


def apply_preset(settings: dict, name: str) -> tuple[dict, list[str]]:
    """``settings`` with those not given (None or False) filled from the preset
    ``name``, and the preset's settings left out. Where you pick other data, the
    preset's settings for its own data are left out; where you pick another model,
    the network sizes its family does not take (all of them for a family of another
    size vocabulary: an RNN given a TCN preset, say) and a guide that does not fit it."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    preset = dict(PRESETS[name])
    model = settings.get("model") or preset["model"]
    ours, theirs = family_of(model), family_of(preset["model"])
    left_out = []
    if settings.get("data") is not None and settings["data"] != preset["data"]:
        left_out += [k for k in DATA_SPECIFIC if k in preset]
    sizes = {k: v for k, v in preset.items() if k in NETWORK_FLAGS}
    if ours.sizes != theirs.sizes:
        left_out += [k for k in sizes if k != "components"]
    else:
        taken = ours.sizes_from_preset(sizes)
        left_out += [k for k in sizes if k not in taken]
        preset |= {k: v for k, v in taken.items() if k not in preset}  # e.g. Wavenet's layers from z_dims
    if "guide" in preset and ours.default_guide != theirs.default_guide:
        left_out.append("guide")
    filled = dict(settings)
    for key, value in preset.items():
        if key not in left_out and (filled.get(key) is None or filled.get(key) is False):
            filled[key] = value
    return filled, list(dict.fromkeys(left_out))
