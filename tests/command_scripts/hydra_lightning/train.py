"""A Hydra + Lightning training script, as the baseline repos we sweep are written.

    python train.py models.optimizer.lr=0.01 trainer.batch_size=16 hydra.run.dir=OUT

Logs with Lightning's CSVLogger under $SWEEPER_TRIAL_DIR (or Hydra's run dir), flushing every
step so each epoch reaches the sweep when it ends (the default, every 100 steps, would hold
short epochs back), and keeps
`last.ckpt` in $SWEEPER_CHECKPOINT_DIR when set, resuming from it, as `trainer.fit(ckpt_path=...)`
does. A tiny MLP on a fixed random classification problem: seconds per epoch on a CPU.
"""
from __future__ import annotations

import os
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Classifier(L.LightningModule):
    def __init__(self, hidden: int, lr: float, momentum: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def training_step(self, batch, _):  # noqa: ANN001, ANN201
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, _):  # noqa: ANN001, ANN201
        x, y = batch
        logits = self.net(x)
        self.log("val/loss", nn.functional.cross_entropy(logits, y))
        self.log("val/acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)


def data(batch_size: int) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(1234)
    x, xv = torch.randn(512, 8, generator=g), torch.randn(256, 8, generator=g)
    y, yv = (x[:, :2].sum(1) > 0).long(), (xv[:, :2].sum(1) > 0).long()
    return (DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True),
            DataLoader(TensorDataset(xv, yv), batch_size=256))


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    L.seed_everything(cfg.seed, workers=True)
    train, val = data(cfg.trainer.batch_size)
    model = Classifier(cfg.models.hidden, cfg.models.optimizer.lr, cfg.models.optimizer.momentum)
    out = os.environ.get("SWEEPER_TRIAL_DIR") or hydra.core.hydra_config.HydraConfig.get().runtime.output_dir
    ckpt_dir = os.environ.get("SWEEPER_CHECKPOINT_DIR")
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0)] if ckpt_dir else []
    trainer = L.Trainer(max_epochs=cfg.trainer.max_epochs, logger=CSVLogger(out, flush_logs_every_n_steps=1), callbacks=callbacks,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                        accelerator="cpu", devices=1)
    last = Path(ckpt_dir) / "last.ckpt" if ckpt_dir else None
    trainer.fit(model, train, val, ckpt_path=str(last) if last and last.is_file() else None)


if __name__ == "__main__":
    main()
