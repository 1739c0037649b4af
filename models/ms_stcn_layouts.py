"""MS-STCN configurations of paper 2, appendix A.1, exactly as listed there.

All have 5 layers. Blizzard (speech, frames of FW samples per step): bottom-up
Wavenets of 5 blocks, kernel 2; top-down Wavenets of 2 blocks. Bottom-up dilations
are [1, 2, 4, 8, 16] without downsampling and [1, 1, 1, 1, 1] with it, except that the
topmost layer of FW=25 and FW=2 with downsampling uses [1, 2, 4, 8, 16]. The
"-flat" variants are the paper's "w/o multiscale" ablations (all strides 1).

IAM-OnDB (handwriting, (dx, dy, pen)): bottom-up Wavenets of 4 blocks with dilations
[1, 1, 1, 1] except [1, 2, 4, 8] at the top; top-down 2 blocks; a 10-component GMM and a
Bernoulli pen bit.

The "w/o latent variables" control of Table 1 is any of these with ``latent=False``
(``run.py train --deterministic``).
"""

from pyro_stcn.models.ms_stcn import MSSTCNConfig

DILATED = [1, 2, 4, 8, 16]
FLAT = [1, 1, 1, 1, 1]

MS_STCN_LAYOUTS: dict[str, MSSTCNConfig] = {
    "blizzard-fw200": MSSTCNConfig(
        x_dim=200, likelihood="gmm", components=10, strides=[1, 2, 2, 2, 1],
        channels=[256] * 5, z_dims=[64] * 5, dilations=[FLAT] * 5,
    ),
    "blizzard-fw200-flat": MSSTCNConfig(
        x_dim=200, likelihood="gmm", components=10, strides=[1] * 5,
        channels=[256] * 5, z_dims=[64] * 5, dilations=[DILATED] * 5,
    ),
    "blizzard-fw25": MSSTCNConfig(
        x_dim=25, likelihood="gmm", components=10, strides=[1, 2, 2, 2, 1],
        channels=[96, 128, 192, 256, 256], z_dims=[24, 32, 48, 64, 64], dilations=[FLAT] * 4 + [DILATED],
    ),
    "blizzard-fw25-flat": MSSTCNConfig(
        x_dim=25, likelihood="gmm", components=10, strides=[1] * 5,
        channels=[96] * 5, z_dims=[24] * 5, dilations=[DILATED] * 5,
    ),
    "blizzard-fw2": MSSTCNConfig(
        x_dim=2, likelihood="gmm", components=2, strides=[1, 5, 5, 4, 1],
        channels=[26, 58, 128, 256, 256], z_dims=[1, 5, 25, 64, 64], dilations=[FLAT] * 4 + [DILATED],
    ),
    "blizzard-fw2-flat": MSSTCNConfig(
        x_dim=2, likelihood="gmm", components=2, strides=[1] * 5,
        channels=[26] * 5, z_dims=[1] * 5, dilations=[DILATED] * 5,
    ),
    "iamondb": MSSTCNConfig(
        x_dim=3, likelihood="handwriting", components=10, strides=[1, 2, 2, 2, 1],
        channels=[64] * 5, z_dims=[8, 8, 8, 4, 2], dilations=[[1, 1, 1, 1]] * 4 + [[1, 2, 4, 8]],
    ),
}  # fmt: skip
