"""The step hook reads Lightning's own progress record instead of the ``global_step``
property chain: it must agree with ``global_step`` at every step, in automatic
optimization with accumulation and in manual optimization (real tiny trainings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.callbacks import Callback  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from afs_callbacks.integrations._lightning import step_counter  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self, manual: bool = False) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.automatic_optimization = not manual

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        if self.automatic_optimization:
            return loss
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        if batch_idx % 2 == 1:  # a step every second batch: global_step lags the batches
            optimizer.step()
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Compare(Callback):
    """Records (counter, global_step) after every batch."""

    def __init__(self) -> None:
        self.pairs: list[tuple[int, int]] = []
        self.counter: Any = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.counter = step_counter(trainer, pl_module)

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self.pairs.append((self.counter.completed, trainer.global_step))


@pytest.mark.parametrize(("manual", "options"), [(False, {"accumulate_grad_batches": 2}), (True, {})])
def test_the_step_counter_is_global_step(tmp_path: Path, manual: bool, options: dict[str, Any]) -> None:
    data = TensorDataset(torch.randn(24, 2), torch.randn(24, 1))
    compare = Compare()
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        callbacks=[compare],
        **options,
    )
    trainer.fit(Tiny(manual), DataLoader(data, batch_size=4))
    assert compare.counter is not None
    assert len(compare.pairs) == 12 and all(mine == theirs for mine, theirs in compare.pairs)
    assert compare.pairs[-1][1] == 6  # one optimizer step every two batches


def test_an_unknown_layout_falls_back_to_the_property() -> None:
    class Bare:
        global_step = 3

    assert step_counter(Bare(), None) is None
