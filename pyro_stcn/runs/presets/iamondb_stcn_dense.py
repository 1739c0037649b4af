"""IAM-OnDB handwriting with STCN-dense: paper 1, Table 1 (IAM-OnDB, GMM column:
1743 nats per sequence, the best model there).

Paper 1 (section 6.1) and the authors' code, as DESIGN.md reports them:
- 5 stochastic layers, each a group of 6 gated Wavenet blocks (kernel 2, dilations
  1..32) of 256 filters: a receptive field of 316 steps;
- latent sizes [32, 16, 8, 4, 2], bottom to top; prior and posterior nets of two
  1x1 convs with ReLU;
- output net: five 1x1 convs with ReLU, width 256, then a pen Bernoulli times a
  20-component GMM over (dx, dy) (Graves 2013);
- plain ELBO (no KL annealing for this entry);
- Adam, lr 5e-4 × 0.94^(step/1000), gradient norm clipped at 1, batch 20, early
  stopping on the validation split.

Our choices where the paper is silent: training on random 300-step windows (the authors
crop long handwriting sequences; the length is ours) and uniform dequantisation noise of
width 1 tablet unit on the training offsets. Give your copy of the lineStrokes files with
``--data-dir``. IAM-OnDB's own split lists can be given with ``--split-lists``.

The CPU variant trains the same recipe, scaled down, on the LASA pen trajectories (real
tablet demonstrations, (dx, dy, pen) with the same likelihood); LASA positions are
smoothed floats, so there is nothing to dequantise.
"""

PAPER = {
    "data": "iamondb",
    "dequantise": True,
    "model": "stcn-dense",
    "guide": "ladder",
    "objective": "elbo",
    "likelihood": "handwriting",
    "components": 20,
    "channels": [256],
    "blocks": 6,
    "z_dims": [32, 16, 8, 4, 2],
    "hidden": 256,
    "output_layers": 5,
    "batch_size": 20,
    "lr": 5e-4,
    "lr_decay": 0.94,
    "crop": 300,
    "steps": 500_000,
    "valid_every": 1000,
}

CPU = {
    **PAPER,
    "data": "lasa",
    "dequantise": False,
    "components": 5,
    "channels": [32],
    "blocks": 5,
    "z_dims": [16, 8, 8, 4, 2],
    "hidden": 32,
    "output_layers": 2,
    "lr": 2e-3,
    "lr_decay": 0.8,
    "crop": 250,
    "steps": 1500,
    "valid_every": 100,
}
