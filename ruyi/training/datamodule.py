"""The Lightning DataModule around a registered dataset (``configs/data/<name>.yaml``)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ruyi.errors import ConfigError
from ruyi.training.data import collate_clips


class ClipDataModule(L.LightningDataModule):
    """Shuffled batches of clips; under DDP/FSDP Lightning gives each rank its own share."""

    def __init__(self, *, dataset: Dataset, batch_size: int = 1, num_workers: int = 0) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ConfigError(f"batch_size={batch_size} must be >= 1 and num_workers={num_workers} >= 0")
        if len(dataset) < batch_size:  # type: ignore[arg-type]
            raise ConfigError(f"the dataset holds {len(dataset)} clips, fewer than batch_size={batch_size}")  # type: ignore[arg-type]
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
            collate_fn=collate_clips, drop_last=True, persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )  # fmt: skip
