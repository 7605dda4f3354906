"""Notifications from PyTorch Lightning runs, for the standalone ``pytorch_lightning`` package.

Example::

    from pytorch_lightning import Trainer
    from afs_callbacks.integrations.pytorch_lightning import AFSNotify

    trainer = Trainer(max_epochs=10, callbacks=[AFSNotify()])  # channels from env/.env

From the command line (LightningCLI)::

    python train.py fit --trainer.callbacks+=afs_callbacks.integrations.pytorch_lightning.AFSNotify \\
        --trainer.callbacks.init_args.monitor=val_acc --trainer.callbacks.init_args.mode=max

For ``lightning.pytorch`` (the ``lightning`` package) use
:mod:`afs_callbacks.integrations.lightning`: the two namespaces' classes cannot mix.
"""

from __future__ import annotations

from afs_callbacks._install import install_hint
from afs_callbacks.integrations._lightning import LightningNotifyCore

try:
    from pytorch_lightning.callbacks import Callback
except ImportError as error:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "afs_callbacks.integrations.pytorch_lightning needs the 'pytorch-lightning' extra:"
        f" {install_hint('pytorch-lightning')}"
    ) from error


class AFSNotify(LightningNotifyCore, Callback):  # type: ignore[misc]
    __doc__ = LightningNotifyCore.__doc__


__all__ = ["AFSNotify"]
