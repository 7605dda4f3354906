"""Notifications from PyTorch Lightning runs, for the ``lightning.pytorch`` namespace.

Example::

    from lightning.pytorch import Trainer
    from afs_callbacks.integrations.lightning import AFSNotify

    trainer = Trainer(max_epochs=10, callbacks=[AFSNotify()])  # channels from env/.env

From the command line (LightningCLI)::

    python train.py fit --trainer.callbacks+=afs_callbacks.integrations.lightning.AFSNotify \\
        --trainer.callbacks.init_args.monitor=val_acc --trainer.callbacks.init_args.mode=max

For the standalone ``pytorch_lightning`` package use
:mod:`afs_callbacks.integrations.pytorch_lightning`: the two namespaces' classes cannot mix.
"""

from __future__ import annotations

from afs_callbacks._install import install_hint
from afs_callbacks.integrations._lightning import LightningNotifyCore

try:
    from lightning.pytorch.callbacks import Callback
except ImportError as error:  # pragma: no cover - depends on what is installed
    raise ImportError(
        f"afs_callbacks.integrations.lightning needs the 'lightning' package: {install_hint('lightning')}"
        " (for the standalone pytorch_lightning package use afs_callbacks.integrations.pytorch_lightning)"
    ) from error


class AFSNotify(LightningNotifyCore, Callback):  # type: ignore[misc]
    __doc__ = LightningNotifyCore.__doc__


__all__ = ["AFSNotify"]
