"""Why the flow guide and the mixture prior trained worse than the Gaussians they
generalise: the default STCN-dense on the digits, trained with each KL gradient
estimator and each start of the flow, several seeds each, scored on the test split.

    python scripts/kl_gradient_study.py [--steps 600] [--seeds 0,1,2] [--jobs 2] [--out runs/kl-study]

Each variant trains in its own process with one thread (``--jobs`` at a time), as
``run.py train --objective elbo --steps N --seed S`` would with the settings below (the
plain ELBO whatever the default objective), and prints one
Markdown row: the test -ELBO of each seed, their mean and standard deviation.

Variants (the guide, the prior, the ``--kl-gradient``, and for the flow its start):

- ``gaussian``: the independent Gaussian guide and the dynamic Gaussian prior; the KL
  in closed form (the baseline);
- ``gaussian-sampled-*``: the same guide read as a flow with no steps, so that its KL is
  the sampled log q(z) - log p(z): what sampling alone costs;
- ``iaf-stable-*``: the IAF guide as it was built before (Kingma et al.'s stable update
  y = σ y + (1 - σ) m with Pyro's random output layers); ``iaf-identity-*``: as now
  (y = m + exp(s) y, output layers zero, so the identity at the start);
- ``mixture-*``: the independent guide and the mixture prior.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VARIANTS = {
    "gaussian": dict(guide="independent"),
    "gaussian-sampled-pathwise": dict(guide="independent", sampled=True, kl_gradient="pathwise"),
    "gaussian-sampled-stl": dict(guide="independent", sampled=True, kl_gradient="stl"),
    "iaf-stable-pathwise": dict(guide="iaf", stable=True, kl_gradient="pathwise"),
    "iaf-stable-stl": dict(guide="iaf", stable=True, kl_gradient="stl"),
    "iaf-identity-stl": dict(guide="iaf", kl_gradient="stl"),
    "iaf-stable-control-variate": dict(guide="iaf", stable=True, kl_gradient="control-variate"),
    "iaf-identity-control-variate": dict(guide="iaf", kl_gradient="control-variate"),
    "mixture-pathwise": dict(guide="independent", prior="mixture", kl_gradient="pathwise"),
    "mixture-stl": dict(guide="independent", prior="mixture", kl_gradient="stl"),
    "mixture-control-variate": dict(guide="independent", prior="mixture", kl_gradient="control-variate"),
}


def as_before(guide) -> None:
    """Rebuild an IAF guide's flows as they were before they started at the identity."""
    from pyro.distributions.transforms import ConditionalAffineAutoregressive
    from pyro.nn import ConditionalAutoRegressiveNN

    for steps in guide.flow:
        for k, step in enumerate(steps):
            old = step.nn
            arn = ConditionalAutoRegressiveNN(old.input_dim, old.context_dim, old.hidden_dims,
                                              permutation=old.permutation)  # fmt: skip
            steps[k] = ConditionalAffineAutoregressive(arn, stable=True)
    guide.stable_update.fill_(True)  # so that best.pt loads with that update


def train_one(name: str, seed: int, steps: int, out: Path) -> dict:
    """Train one variant in this process and score it on the test split."""
    import pyro.distributions as dist

    from pyro_stcn import runs
    from pyro_stcn.guides import IAFGuide, IndependentGuide

    variant = VARIANTS[name]
    if variant.get("sampled"):
        plain = IndependentGuide.posterior_dist
        IndependentGuide.posterior_dist = lambda self, *a: dist.TransformedDistribution(plain(self, *a), [])
    if variant.get("stable"):
        built = IAFGuide.__init__

        def build_as_before(self, *args, **kwargs):
            built(self, *args, **kwargs)
            as_before(self)

        IAFGuide.__init__ = build_as_before
    # the plain ELBO, pinned: the study asks what each KL gradient does to it, whatever the default objective
    settings = {"steps": steps, "seed": seed, "objective": "elbo", "guide": variant["guide"],
                "prior": variant.get("prior"), "kl_gradient": variant.get("kl_gradient")}  # fmt: skip
    run_config, data = runs.new_run_config(settings)
    model, guide = runs.start_run(run_config, out)
    runs.train_run(run_config, model, guide, data, out, callbacks=[])
    scores = runs.score(runs.load_run(out), "test")
    return {"neg_elbo": scores.neg_elbo.per_sequence, "kl": scores.neg_elbo.kl_per_sequence}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="runs/kl-study")
    parser.add_argument("--one", nargs=3, metavar=("VARIANT", "SEED", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        name, seed, out = args.one
        print(json.dumps(train_one(name, int(seed), args.steps, Path(out))))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.variants.split(",")
    jobs = [(name, seed) for name in names for seed in seeds]

    def run(job):
        name, seed = job
        out = Path(args.out) / f"{name}-s{seed}"
        result = out / "result.json"
        if not result.is_file():  # a rerun reads what finished
            command = [sys.executable, __file__, "--steps", str(args.steps), "--one", name, str(seed), str(out)]
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                  check=True)  # fmt: skip
            result.write_text(done.stdout.strip().splitlines()[-1])
        return job, json.loads(result.read_text())

    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(pool.map(run, jobs))
    print(f"STCN-dense on the digits, {args.steps} steps, seeds {args.seeds}: test -ELBO, nats per image")
    print("| variant | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |")
    print("|---" * (len(seeds) + 2) + "|")
    for name in names:
        values = [results[name, s]["neg_elbo"] for s in seeds]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        cells = " | ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {cells} | {statistics.mean(values):.2f} ± {spread:.2f} |")


if __name__ == "__main__":
    main()
