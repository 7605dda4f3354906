"""Keras 3 + afs-callbacks: two tiny trainings on CPU, and what they sent.

    KERAS_BACKEND=torch python examples/keras_example.py

Runs in seconds with no account. The first run fits a small regression with validation;
the second one gets a batch with a NaN input at step 6, and ``stop_on_nan=True`` stops it.
The messages go to your channels when the environment or ``.env`` configures one, else to a
demo webhook on 127.0.0.1 (see ``examples/_demo.py``); either way ``afs-notify history``
shows them afterwards. Any backend works (torch, jax, tensorflow); this demo defaults to torch.

In your own code you need one line, and your channels in the environment or ``.env``
(``SLACK_WEBHOOK_URL=...``, ``DISCORD_WEBHOOK_URL=...``; see ``afs-notify status``)::

    model.fit(x, y, callbacks=[AFSNotify()])
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("KERAS_BACKEND", "torch")  # must be set before keras is imported

import keras
import numpy as np
from _demo import notifications  # your channels from .env, or a local demo receiver

import afs_callbacks
from afs_callbacks import NotificationManager
from afs_callbacks.integrations.keras import AFSNotify


def points(count: int, nan_row: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((count, 1)).astype("float32")
    y = 3 * x + 1 + 0.05 * rng.standard_normal((count, 1)).astype("float32")
    if nan_row is not None:
        x[nan_row] = np.nan  # one corrupt record, as real data sometimes has
    return x, y


def train(manager: NotificationManager, nan_row: int | None = None, **notify: object) -> None:
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)], name="tiny_regressor")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = points(128, nan_row)
    with afs_callbacks.watch():  # a crash in fit() would be reported, then raised
        model.fit(
            x,
            y,
            epochs=5,
            batch_size=16,
            validation_split=0.25,
            shuffle=False,
            verbose=0,
            callbacks=[AFSNotify(manager, **notify)],  # type: ignore[arg-type]
        )


def main() -> None:
    warnings.filterwarnings("ignore")
    keras.utils.set_random_seed(0)
    with notifications() as manager:
        train(manager, model_name="tiny-regressor")
        train(manager, nan_row=5 * 16, model_name="tiny-regressor-nan", stop_on_nan=True)


if __name__ == "__main__":
    main()
