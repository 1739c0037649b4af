"""The gradients of the two terms of the -ELBO of trained runs, per image, on a batch
of training sequences: the reconstruction's, and the KL's by each gradient estimator
(pathwise, sticking the landing, control variate), each over several draws.

    python scripts/kl_gradient_norms.py runs/ext-iaf runs/ext-mixture [--batch 32] [--draws 40]

For each run and term it prints the norm (over all parameters) of the mean gradient
and the total standard deviation around it, sqrt(Σ_i Var g_i): how much of a step is
signal and how much noise. Closed-form KLs have the same gradient under every
estimator; only sampled ones (a flow guide, a mixture prior) differ.
"""

import argparse

import pyro
import torch

from pyro_stcn import runs
from pyro_stcn.data import pad_batch
from pyro_stcn.evaluation.bounds import trace_pair
from pyro_stcn.inference.kl import kl_estimate, latent_values

ESTIMATORS = ("pathwise", "stl", "control-variate")


def term_gradients(run: runs.Run, batch: int, draws: int) -> dict[str, torch.Tensor]:
    """``[draws, parameters]`` gradients of the reconstruction and of the KL by each estimator."""
    model, guide = run.model.train(), run.guide.train()
    params = list({id(p): p for m in (model, guide) for p in m.parameters()}.values())
    x, mask = pad_batch(run.data.train[:batch])
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in ("reconstruction", *ESTIMATORS)}
    for seed in range(draws):
        for term in rows:
            pyro.set_rng_seed(seed)  # the same draw for every term
            guide_trace, model_trace = trace_pair(model.model, guide, x, mask)
            sites = [(n, s) for n, s in model_trace.nodes.items() if s["type"] == "sample"]
            if term == "reconstruction":
                value = -sum(s["log_prob_sum"] for _, s in sites if s["is_observed"])
            else:
                values = latent_values(guide_trace)
                value = sum(kl_estimate(guide_trace.nodes[n], s, term, values).sum() for n, s in sites
                            if not s["is_observed"])  # fmt: skip
            grads = torch.autograd.grad(value / len(x), params, allow_unused=True)
            rows[term].append(torch.cat([torch.zeros(p.numel()) if g is None else g.flatten()
                                         for g, p in zip(grads, params)]))  # fmt: skip
    return {term: torch.stack(r) for term, r in rows.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--draws", type=int, default=40)
    args = parser.parse_args()
    print(f"gradient per image on {args.batch} training sequences, {args.draws} draws: norm of the mean, total sd")
    print("| run | term | mean | sd |")
    print("|---|---|---|---|")
    for directory in args.runs:
        for term, g in term_gradients(runs.load_run(directory), args.batch, args.draws).items():
            name = term if term == "reconstruction" else f"KL, {term}"
            print(f"| {directory} | {name} | {g.mean(0).norm():.2f} | {g.var(0).sum().sqrt():.2f} |")
