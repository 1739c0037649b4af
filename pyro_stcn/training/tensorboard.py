"""TensorBoard events beside the CSV log (``run.py train --tensorboard``; needs the
``tensorboard`` package)."""

import importlib.util
import io

import matplotlib.pyplot as plt
import torch

from pyro_stcn.errors import SettingError
from pyro_stcn.evaluation.plots import plot_sequences
from pyro_stcn.training.callbacks import Callback
from pyro_stcn.training.config import TrainState


class TensorBoard(Callback):
    """At every step the log row's loss, KL (total and per layer, nats per sequence) and
    learning rate, and the objective's β and λ where it has them (``train/...``); at
    every validation the validation -ELBO and KL of each layer (``valid/...``) and
    ``samples``, a figure of sequences drawn by the model's ``generate`` as the data's
    kind (fixed seed, on a forked random state: training draws what it would without
    TensorBoard). Rank 0 alone writes."""

    SAMPLES = 8  # sequences in the figure

    def __init__(self, data):
        if importlib.util.find_spec("tensorboard") is None:
            raise SettingError("<tensorboard> needs the tensorboard package: pip install tensorboard")
        self.data, self.writer = data, None

    def on_train_start(self, trainer, state: TrainState) -> None:
        if trainer.main:
            from torch.utils.tensorboard import SummaryWriter  # optional: only with --tensorboard

            self.writer = SummaryWriter(str(trainer.dir))

    def on_step(self, trainer, state: TrainState, row: dict) -> None:
        if self.writer is None:
            return
        step = row["step"]
        for key in ("loss", "kl", "lr", *(k for k in row if k.startswith("kl_"))):
            self.writer.add_scalar(f"train/{key}", row[key], step)
        for attr in ("beta", "lam"):  # β (annealing) and λ (free bits), as set for this step
            if hasattr(trainer.objective, attr):
                self.writer.add_scalar(f"train/{attr}", getattr(trainer.objective, attr), step)

    def on_validation(self, trainer, state: TrainState, row: dict, kl: dict[str, float]) -> None:
        if self.writer is None:
            return
        step = row["step"]
        self.writer.add_scalar("valid/loss", row["valid_loss"], step)
        for name, value in kl.items():
            self.writer.add_scalar(f"valid/kl_{name}", value, step)
        generate = getattr(trainer.modules.get("model"), "generate", None)
        if generate is not None:
            self.writer.add_image("samples", self._samples(generate, trainer.device), step, dataformats="HWC")
        self.writer.flush()

    def _samples(self, generate, device: torch.device):
        """The sample figure as an image array [height, width, channels]."""
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            torch.manual_seed(0)
            generated = generate(self.SAMPLES, len(self.data.test[0])).cpu()
        png = io.BytesIO()
        plot_sequences({"generated": generated}, self.data.kind, png)
        png.seek(0)
        return plt.imread(png, format="png")

    def on_train_end(self, trainer, state: TrainState) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
