"""Live cards end to end: a real tiny Lightning, Hugging Face and Keras training on CPU,
the tracker's run states through the manager to the card dispatcher, a real Telegram
channel and a loopback Bot API that keeps its messages.

Each run must leave one card (posted silently, then edited in place) showing the final
state, plus the separate, audible terminal message.

These need the tracker producing RunState snapshots (``NotificationManager.update_run``)
and the manager wiring the CardDispatcher in; until both have landed they are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from afs_callbacks.channels.telegram import TelegramNotifier
from afs_callbacks.config import Settings
from afs_callbacks.manager import NotificationManager
from tests.cards.conftest import CHAT, TELEGRAM_TOKEN
from tests.cards.services import FakeTelegram

pytestmark = [
    pytest.mark.skipif(
        not hasattr(NotificationManager, "update_run"),
        reason="needs NotificationManager.update_run (the tracker's run states) and the card wiring",
    ),
    # Keras' torch backend converts tensors with a NumPy 1 idiom; not this project's concern.
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]


@pytest.fixture
def manager(
    bot_api: FakeTelegram, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[NotificationManager]:
    """A manager whose only channel is Telegram on the fake Bot API, cards every 0.2 s."""
    monkeypatch.setattr(TelegramNotifier, "min_interval", 0.0)
    channel = TelegramNotifier(TELEGRAM_TOKEN, CHAT, api_url=bot_api.url(""))
    settings = Settings(
        state_dir=tmp_path / "state", card=True, card_interval=0.2, dedup_window=0, console="never"
    )
    with NotificationManager({"telegram": channel}, settings=settings) as built:
        yield built


def assert_one_final_card(manager: NotificationManager, bot_api: FakeTelegram, epochs: int) -> None:
    """One silent card, edited to the completed state; the end also pushed apart."""
    manager.close(timeout=20)  # the end of the run: messages flushed, cards brought final
    cards = [message for message in bot_api.messages.values() if message["silent"]]
    assert len(cards) == 1, [message["text"][:80] for message in bot_api.messages.values()]
    final = cards[0]["text"]
    assert "completed" in final.splitlines()[0], final
    assert f"epoch {epochs}/{epochs}" in final, final
    assert bot_api.calls("editMessageText"), "the card was never edited"
    pushes = [message["text"] for message in bot_api.messages.values() if not message["silent"]]
    assert any("ompleted" in text for text in pushes), "no separate terminal message"


def test_lightning_run_keeps_one_live_card(
    manager: NotificationManager, bot_api: FakeTelegram, tmp_path: Path
) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.demos.boring_classes import BoringModel

    from afs_callbacks.integrations.lightning import AFSNotify

    class Tiny(BoringModel):  # type: ignore[misc]
        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            loss = self.step(batch)
            self.log("val_loss", loss)
            return {"x": loss}

    trainer = pl.Trainer(
        callbacks=[AFSNotify(manager)],
        max_epochs=3,
        limit_train_batches=4,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(Tiny())
    assert_one_final_card(manager, bot_api, epochs=3)


def test_transformers_run_keeps_one_live_card(
    manager: NotificationManager, bot_api: FakeTelegram, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from afs_callbacks.integrations.transformers import AFSNotify

    class Regressor(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def forward(self, x: Any, labels: Any = None) -> Any:
            prediction = self.layer(x)
            return (torch.nn.functional.mse_loss(prediction, labels), prediction)

    x = torch.rand(32, 1, generator=torch.Generator().manual_seed(0))
    data = [{"x": x[i], "labels": 3 * x[i] + 1} for i in range(len(x))]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=2,
        per_device_train_batch_size=8,
        eval_strategy="epoch",
        logging_steps=2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=Regressor(),
        args=args,
        train_dataset=data,
        eval_dataset=data[:8],
        callbacks=[AFSNotify(manager)],
    )
    trainer.train()
    assert_one_final_card(manager, bot_api, epochs=2)


def test_keras_run_keeps_one_live_card(manager: NotificationManager, bot_api: FakeTelegram) -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    np = pytest.importorskip("numpy")
    keras = pytest.importorskip("keras")
    from afs_callbacks.integrations.keras import AFSNotify

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)], name="tiny")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(0).random((64, 1)).astype("float32")
    model.fit(
        x, 3 * x + 1, epochs=3, batch_size=8, verbose=0, validation_split=0.25, callbacks=[AFSNotify(manager)]
    )
    assert_one_final_card(manager, bot_api, epochs=3)


def test_the_card_moves_from_the_first_steps(
    manager: NotificationManager, bot_api: FakeTelegram, tmp_path: Path
) -> None:
    """A first epoch of 3 s, cards every 0.2 s: the card shows steps done long before the
    epoch ends (the run's first state after its start goes out half a second in), not
    "step 0" until then."""
    pl = pytest.importorskip("lightning.pytorch")
    import time

    from lightning.pytorch.demos.boring_classes import BoringModel

    from afs_callbacks.integrations.lightning import AFSNotify

    edits: list[tuple[int, str]] = []  # (steps done when the edit was seen, its text)

    class Slow(BoringModel):  # type: ignore[misc]
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            time.sleep(0.1)
            edits.extend(
                (self.global_step, r.json()["text"]) for r in bot_api.calls("editMessageText")[len(edits) :]
            )
            return super().training_step(batch, batch_idx)

    trainer = pl.Trainer(
        callbacks=[AFSNotify(manager, chart=False, monitors=False)],
        max_epochs=1,
        limit_train_batches=30,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(Slow())
    in_epoch = [(done, text) for done, text in edits if done < 30]
    assert in_epoch, "no edit of the card during the first epoch"
    moved = [text for _, text in in_epoch if "step 0" not in text and "step " in text]
    assert moved, [text.splitlines()[1] for _, text in in_epoch]
    assert in_epoch[0][0] <= 20, "the first edit came late in the epoch"
