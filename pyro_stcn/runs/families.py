"""The built-in model families, registered in paper 1's table order (then MS-STCN).

Each is one :class:`~pyro_stcn.runs.registry.Family`: the models it names, its config
class and the sizes of the default run (digits on 2 CPU cores in under 5 minutes; the
baselines sized like the default STCN: Wavenet is its trunk without latents, the
recurrent models have parameter counts of the same order), the network flags it
takes, and its guides.
"""

import dataclasses

from pyro_stcn.errors import SettingError
from pyro_stcn.guides import (
    IAFGuide,
    IndependentGuide,
    LadderGuide,
    MultiscaleIAFGuide,
    MultiscaleIndependentGuide,
    MultiscaleLadderGuide,
    NoLatentGuide,
    VRNNGuide,
)
from pyro_stcn.models import (
    MSSTCN,
    RNN,
    STCN,
    VRNN,
    MSSTCNConfig,
    RNNConfig,
    STCNConfig,
    VRNNConfig,
    WavenetConfig,
    WavenetModel,
)
from pyro_stcn.models.ms_stcn import default_dilations
from pyro_stcn.models.ms_stcn_layouts import MS_STCN_LAYOUTS
from pyro_stcn.runs.registry import Family, register


def dense_variant(model: type):
    """Build ``model`` with ``dense`` set by the name: ``stcn-dense``, ``wavenet-dense``."""

    def build(name: str, config):
        return model(dataclasses.replace(config, dense=name.endswith("-dense")))

    return build


class WavenetFamily(Family):
    """Wavenet given an STCN preset takes as many feature levels as it has latent layers."""

    def sizes_from_preset(self, sizes: dict) -> dict:
        taken = super().sizes_from_preset(sizes)
        if "z_dims" in sizes:
            taken["layers"] = len(sizes["z_dims"])
        return taken


class VRNNFamily(Family):
    """The VRNN has one latent layer: ``--z-dims`` gives its single size."""

    def configure(self, name: str, sizes: dict, data: dict):
        sizes = dict(sizes)
        if "z_dims" in sizes:
            sizes["z_dim"] = sizes.pop("z_dims")
        return super().configure(name, sizes, data)


class MSSTCNFamily(Family):
    """MS-STCN: ``--layout`` picks a paper-2 layout (appendix A.1) as the base, else the
    IAM-OnDB strides and dilations at CPU size; ``--strides`` sets the layers,
    ``--channels`` and ``--z-dims`` take one value for all layers or one per layer; a
    layout's own dilations stand unless the layers or their block count change."""

    def configure(self, name: str, sizes: dict, data: dict) -> MSSTCNConfig:
        sizes = dict(sizes)
        layout = sizes.pop("layout", None)
        base = MS_STCN_LAYOUTS[layout] if layout else self.defaults
        strides, blocks = sizes.pop("strides", base.strides), sizes.pop("blocks", None)
        layers = len(strides)

        def per_layer(flag: str) -> list[int]:
            values, default = sizes.pop(flag, None), getattr(base, flag)
            if values is None and len(default) != layers:
                source = f"layout {layout}" if layout else "default"
                raise SettingError(
                    f"<strides> gives {layers} layers; give <{flag}> too (the {source} has "
                    f"{len(default)})"
                )
            values = values or default
            if len(values) == 1:
                return values * layers
            if len(values) != layers:
                raise SettingError(f"<{flag}> has {len(values)} values for {layers} layers (<strides> {strides})")
            return values

        same_layout = strides == base.strides and blocks in (None, len(base.dilations[0]))
        dilations = base.dilations if same_layout else default_dilations(strides, blocks or len(base.dilations[0]))
        latent = not sizes.pop("deterministic", False)
        channels, z_dims = per_layer("channels"), per_layer("z_dims")
        return dataclasses.replace(base, strides=strides, channels=channels, z_dims=z_dims, dilations=dilations,
                                   latent=latent, **sizes, **data)  # fmt: skip


TCN_SIZES = {"channels", "blocks", "hidden", "output_layers", "components"}

register(
    WavenetFamily(
        models={"wavenet": "Wavenet", "wavenet-dense": "Wavenet-dense"},
        model=WavenetModel,
        build=dense_variant(WavenetModel),
        config=WavenetConfig,
        defaults=WavenetConfig(layers=4, channels=32, blocks=4, hidden=32),
        guides={"none": NoLatentGuide},
        default_guide="none",
        flags=TCN_SIZES | {"layers"},
        sizes="tcn",
    )
)
register(
    Family(
        models={"rnn": "RNN"},
        model=RNN,
        config=RNNConfig,
        defaults=RNNConfig(hidden=128),
        guides={"none": NoLatentGuide},
        default_guide="none",
        flags={"hidden", "output_layers", "components"},
        sizes="rnn",
    )
)
register(
    VRNNFamily(
        models={"vrnn": "VRNN"},
        model=VRNN,
        config=VRNNConfig,
        defaults=VRNNConfig(hidden=64, z_dim=16),
        guides={"vrnn": VRNNGuide},
        default_guide="vrnn",
        flags={"prior", "hidden", "z_dims", "output_layers", "components"},
        sizes="rnn",
    )
)
register(
    Family(
        models={"stcn": "STCN", "stcn-dense": "STCN-dense"},
        model=STCN,
        build=dense_variant(STCN),
        config=STCNConfig,
        defaults=STCNConfig(z_dims=[16, 8, 8, 4], channels=32, blocks=4, hidden=32),
        guides={"ladder": LadderGuide, "independent": IndependentGuide, "iaf": IAFGuide},
        default_guide="ladder",
        flags=TCN_SIZES | {"prior", "z_dims"},
        per_layer={"z_dims"},
        sizes="tcn",
    )
)
register(
    MSSTCNFamily(
        models={"ms-stcn": "MS-STCN"},
        model=MSSTCN,
        config=MSSTCNConfig,
        defaults=MSSTCNConfig(
            strides=[1, 2, 2, 2, 1],
            channels=[32] * 5,
            z_dims=[8, 8, 8, 4, 2],
            dilations=default_dilations([1, 2, 2, 2, 1], 4),
        ),  # fmt: skip
        guides={"ladder": MultiscaleLadderGuide, "independent": MultiscaleIndependentGuide, "iaf": MultiscaleIAFGuide},
        default_guide="ladder",
        flags={"prior", "channels", "blocks", "z_dims", "layout", "strides", "deterministic", "components"},
        per_layer={"channels", "z_dims", "strides"},
        sizes="ms-stcn",
        compared=False,
    )
)
