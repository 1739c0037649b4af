"""Paper experiments as presets: each is the set of ``run.py train`` flags that sets
up one experiment of the papers (data, model, likelihood, optimiser, schedule), kept
in a small file beside the papers' own settings.

A preset supplies defaults only: a flag given on the command line wins. Each paper
preset has a CPU-sized variant, ``NAME-cpu``, that trains in minutes on 2 cores on a
data set shipped in a package; the README's figures come from those.
"""

from pyro_stcn.presets import blizzard_ms_stcn_fw200, iamondb_stcn_dense, mnist_stcn_dense, timit_stcn

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
