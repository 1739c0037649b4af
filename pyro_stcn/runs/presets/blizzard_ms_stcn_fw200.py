"""Blizzard speech with MS-STCN, frames of 200 samples: paper 2, Table 1 (FW = 200).

Paper 2 (section 4 and appendix A.1):
- the ``blizzard-fw200`` layout of ``models/ms_stcn_layouts.py``: 5 layers with strides
  [1, 2, 2, 2, 1], 256 filters and 64 latent units per layer and step, bottom-up
  Wavenets of 5 blocks, top-down Wavenets of 2 blocks;
- a 10-component GMM over each 200-sample frame;
- linear free bits (eq. A.3) with λ0 = 0.5 nats per latent unit, halved every 300,000
  steps;
- Adam with an exponentially decaying learning rate from 5e-4 (the decay rate is not
  stated; we use DESIGN.md's speech setting, × 0.98 every 1000 steps), batch 128
  (DESIGN.md), 100 epochs.

Blizzard's wav files are yours: give ``--data-dir``. Its 0.5 s segments at 16 kHz are
40 frames of 200 samples.

The CPU variant runs the same layout at width 32 with 8 latent units per layer on the
``speech`` set (one speaker, 8 kHz: 0.5 s segments are 20 frames of 200 samples).
"""

PAPER = {
    "data": "wav",
    "fw": 200,
    "model": "ms-stcn",
    "layout": "blizzard-fw200",
    "guide": "independent",
    "objective": "linear-free-bits",
    "lam": 0.5,
    "lam_half_life": 300_000,
    "likelihood": "gmm",
    "components": 10,
    "batch_size": 128,
    "lr": 5e-4,
    "lr_decay": 0.98,
    "steps": 500_000,
    "valid_every": 1000,
}

CPU = {
    **PAPER,
    "data": "speech",
    "channels": [32],
    "z_dims": [8],
    "batch_size": 32,
    "lr": 2e-3,
    "steps": 1500,
    "valid_every": 100,
}
