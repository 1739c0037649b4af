"""Gradient norms of the two terms of the -ELBO of trained runs: the KL and the
reconstruction, per image, on a batch of training sequences, for several draws.

    python scripts/kl_gradient_norms.py runs/ext-ladder-dynamic runs/ext-iaf-dynamic

Prints, for each run, the norm over all parameters of the gradient of each term
(divided by the batch size, as the trainer divides the loss) for each draw.
"""

import argparse

import pyro
import torch

from pyro_stcn import runs
from pyro_stcn.data import pad_batch
from pyro_stcn.elbo import unit_kl
from pyro_stcn.evaluate import trace_pair


def term_gradient_norms(run: runs.Run, batch: int, draws: int) -> dict[str, list[float]]:
    model, guide = run.model.train(), run.guide.train()
    params = list({id(p): p for m in (model, guide) for p in m.parameters()}.values())
    x, mask = pad_batch(run.data.train[:batch])
    norms = {"kl": [], "reconstruction": []}
    for seed in range(draws):
        pyro.set_rng_seed(seed)
        guide_trace, model_trace = trace_pair(model.model, guide, x, mask)
        sites = [(n, s) for n, s in model_trace.nodes.items() if s["type"] == "sample"]
        kl = sum(unit_kl(guide_trace.nodes[n], s).sum() for n, s in sites if not s["is_observed"])
        reconstruction = -sum(s["log_prob_sum"] for _, s in sites if s["is_observed"])
        for name, term in (("kl", kl), ("reconstruction", reconstruction)):
            grads = torch.autograd.grad(term / len(x), params, retain_graph=True, allow_unused=True)
            norms[name].append(float(torch.sqrt(sum((g**2).sum() for g in grads if g is not None))))
    return norms


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--draws", type=int, default=5)
    args = parser.parse_args()
    for directory in args.runs:
        norms = term_gradient_norms(runs.load_run(directory), args.batch, args.draws)
        print(directory, {k: [round(v, 1) for v in vs] for k, vs in norms.items()})
