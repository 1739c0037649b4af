"""TIMIT speech with STCN and KL annealing: paper 1, Table 1 (TIMIT, Gaussian column,
"STCN+kla": 48066 nats per sequence, the best model there).

Paper 1 (sections 4 and 6.1) and DESIGN.md:
- frames of 200 samples ("200 dimensional real-valued amplitudes", the preprocessing
  of Chung et al. 2015);
- 5 stochastic layers, each a group of 5 gated Wavenet blocks (kernel 2, dilations
  1..16) of 256 filters;
- latent sizes [256, 128, 64, 32, 16], bottom to top;
- a Gaussian observation model;
- KL annealing: β rises by 1e-4 per step, reaching 1 after 10,000 steps;
- Adam, lr 1e-3 × 0.98^(step/1000), gradient norm clipped at 1, batch 20, early
  stopping on the validation split.

A difference: the authors' speech output net runs gated causal blocks over z; ours is
the same stack of 1x1 convs as for handwriting.

TIMIT's wav files are yours (``--data-dir``; NIST SPHERE files must be converted to
wav first). The CPU variant scales the network down and trains on the ``speech`` set.
"""

PAPER = {
    "data": "wav",
    "fw": 200,
    "model": "stcn",
    "guide": "ladder",
    "objective": "annealed",
    "beta_rate": 1e-4,
    "likelihood": "gaussian",
    "channels": [256],
    "blocks": 5,
    "z_dims": [256, 128, 64, 32, 16],
    "hidden": 256,
    "batch_size": 20,
    "lr": 1e-3,
    "lr_decay": 0.98,
    "steps": 500_000,
    "valid_every": 1000,
}

CPU = {
    **PAPER,
    "data": "speech",
    "channels": [32],
    "z_dims": [32, 16, 8, 8, 4],
    "hidden": 32,
    "beta_rate": 1e-3,
    "lr": 2e-3,
    "lr_decay": 0.8,
    "steps": 1500,
    "valid_every": 100,
}
