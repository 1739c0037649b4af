"""Inverse autoregressive flow posteriors for STCN and MS-STCN (Kingma et al. 2016).

Each z^l is the independent estimate of :mod:`guides.independent` pushed through K
conditional affine autoregressive steps, all conditioned on what the estimate sees
(STCN: c = [d_cur^l_t, z^{l+1}_t]; MS-STCN: c = [h^l, d^l]):

    ε ~ N(μ̂(c), σ̂(c)),   y_0 = ε
    [m_k, s_k] = AutoregressiveNN_k(y_{k-1}, c)
    y_k = m_k + exp(s_k) ⊙ y_{k-1}                   k = 1..K,   z^l = y_K

    log q(z^l | c) = log N(ε; μ̂, σ̂) - Σ_k Σ_i s_{k,i}

(Kingma et al., eq. 10; Pyro clips s to [-5, 3].) Each autoregressive net's output layer
starts at zero, so m = s = 0 and every step is the identity: the flow guide starts as
exactly the independent Gaussian guide it generalises, and departs from it only where
training pays for it. (The paper's "stable" update y = σ y + (1 - σ) m, σ = sigmoid(s +
b), cannot be the identity; started near it with random output layers, it trained to
1-2 nats per image worse than the Gaussian on the digits. A scalar gate g_k on (m_k, s_k)
starting at 0 was tried too: the nets' weights get no gradient while g_k = 0, g_k's
gradient is the noise of random nets, and the gates stayed within 0.05 of 0 for 1500
steps, a flow unused; see "Extending" in the documentation.)

Dimension i of m_k and s_k reads only the dimensions of y_{k-1} before i in the step's
order (MADE masks, Germain et al. 2015), so the Jacobian is triangular; the order is
reversed from one step to the next, as in the paper. The flow runs over the z_l
dimensions of one latent unit (one layer, one step); it never mixes steps, so the
guide stays exactly as causal in time as the independent one.

With z_l = 1 an autoregressive net has no inputs from y: each step is an affine map
whose shift and scale come from c alone. Pyro builds exactly that, with a warning that
suggests it; the warning is silenced here because that is what is wanted.

The flow has no closed-form KL against the model's prior. The objectives estimate it as
the base's closed-form KL plus the flow's sampled correction where they can
(:mod:`pyro_stcn.inference.objectives`), which at the identity is the Gaussian guide's own KL.

References:
    - [1] Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling, "Improving Variational
      Inference with Inverse Autoregressive Flow", NeurIPS 2016.
    - [2] Germain, Gregor, Murray & Larochelle, "MADE: Masked Autoencoder for Distribution
      Estimation", ICML 2015.
"""

import warnings

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import Tensor, nn

from pyro_stcn.guides.independent import IndependentGuide, MultiscaleIndependentGuide
from pyro_stcn.models.ms_stcn import MSSTCN, MSFeatures
from pyro_stcn.models.stcn import STCN
from pyro_stcn.nets.trunk import Features


def iaf_steps(z_dim: int, context_dim: int, hidden: int, flows: int) -> nn.ModuleList:
    """``flows`` conditional IAF steps over ``z_dim`` dimensions given a context of
    ``context_dim``, each with one hidden layer of ``max(hidden, z_dim)`` units (MADE
    needs at least one hidden unit per input degree), each the identity until trained.
    Step k takes the dimensions in order for even k and in reverse for odd k."""
    if flows < 1:
        raise ValueError(f"an IAF posterior needs at least one flow step, got flows={flows}; "
                         "for none use the independent guide")  # fmt: skip
    order = torch.arange(z_dim)
    steps = nn.ModuleList()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ConditionalAutoRegressiveNN input_dim = 1")
        for k in range(flows):
            arn = ConditionalAutoRegressiveNN(
                z_dim, context_dim, [max(hidden, z_dim)], permutation=order.flip(0) if k % 2 else order
            )
            nn.init.zeros_(arn.layers[-1].weight)  # m = s = 0: the identity
            nn.init.zeros_(arn.layers[-1].bias)
            steps.append(ConditionalAffineAutoregressive(arn))
    return steps


def keep_update_form(guide: nn.Module) -> None:
    """Let ``guide`` (whose flows are ``guide.flow``) load runs saved by earlier versions:
    those saved before the flows started at the identity used the stable update
    y = σ y + (1 - σ) m, and say so by having no ``stable_update`` entry in their
    state_dict (the form is a buffer, read once when a state_dict is loaded); those saved
    with gated steps hold a ``gate`` per step, which multiplied the output layer's
    outputs, so it is folded into that layer's weight and bias (exactly)."""
    guide.register_buffer("stable_update", torch.tensor(False))

    def old_runs_were_stable(module, state_dict, prefix, *args) -> None:
        state_dict.setdefault(prefix + "stable_update", torch.tensor(True))
        for l, steps in enumerate(module.flow):
            for k, step in enumerate(steps):
                gate = state_dict.pop(f"{prefix}flow.{l}.{k}.nn.gate", None)
                if gate is not None:
                    last = f"{prefix}flow.{l}.{k}.nn.layers.{len(step.nn.layers) - 1}"
                    for name in ("weight", "bias"):
                        state_dict[f"{last}.{name}"] = gate * state_dict[f"{last}.{name}"]

    def set_form(module, incompatible) -> None:
        for steps in module.flow:
            for step in steps:
                step.kwargs["stable"] = bool(module.stable_update)

    guide.register_load_state_dict_pre_hook(old_runs_were_stable)
    guide.register_load_state_dict_post_hook(set_form)


def flow(base: dist.TorchDistribution, steps: nn.ModuleList, context: Tensor) -> dist.TorchDistribution:
    """``base`` (event dim 1) pushed through ``steps`` conditioned on ``context``
    ``[..., context_dim]``; same batch and event shape as ``base``."""
    return dist.ConditionalTransformedDistribution(base, list(steps)).condition(context)


# The flows' weights learn at a tenth of the run's rate (pyro_stcn.training.optimizer).
# Measured on the digits, plain ELBO, 1500 steps: at the full rate, two seeds of six trained
# to a nat per image worse than the Gaussian guide; at a tenth, both beat it.
FLOW_LR_SCALES = {"flow": 0.1}


class IAFGuide(IndependentGuide):
    """q(z^l_t | ·): the independent estimate of :class:`IndependentGuide` through
    ``flows`` IAF steps conditioned on [d_cur^l_t, z^{l+1}_t]. Its ``state_dict`` holds
    the estimate's nets and the flows (``flow.<layer>.<step>``), not the model's."""

    lr_scales = FLOW_LR_SCALES

    def __init__(self, stcn: STCN, flows: int = 2):
        super().__init__(stcn)
        c = stcn.config
        above = c.z_dims[1:] + [0]
        self.flow = nn.ModuleList(iaf_steps(z, c.channels + a, c.hidden, flows) for z, a in zip(c.z_dims, above))
        keep_update_form(self)

    def posterior_dist(self, layer: int, feats: Features, z_above: Tensor | None) -> dist.TorchDistribution:
        base = super().posterior_dist(layer, feats, z_above)
        return flow(base, self.flow[layer], self.context(layer, feats, z_above))


class MultiscaleIAFGuide(MultiscaleIndependentGuide):
    """q(z^l): the independent estimate N(Conv1x1([h^l, d^l])) through ``flows`` IAF steps
    conditioned on [h^l, d^l]; hidden width C_l. With no latent variables it has no flows."""

    lr_scales = FLOW_LR_SCALES

    def __init__(self, ms_stcn: MSSTCN, flows: int = 2):
        super().__init__(ms_stcn)
        c = ms_stcn.config
        layers = zip(c.channels, c.z_dims) if c.latent else []
        self.flow = nn.ModuleList(iaf_steps(z, 2 * ch, ch, flows) for ch, z in layers)
        keep_update_form(self)

    def posterior_dist(self, layer: int, h: Tensor, feats: MSFeatures) -> dist.TorchDistribution:
        base = super().posterior_dist(layer, h, feats)
        return flow(base, self.flow[layer], self.context(layer, h, feats))
