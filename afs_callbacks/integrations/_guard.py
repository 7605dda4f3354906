"""The hook guard every adapter's hooks run under, and the collective that shares rank
zero's run id; re-exported by :mod:`afs_callbacks.integrations._base`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from afs_callbacks._log import get_logger

if TYPE_CHECKING:
    from afs_callbacks.integrations._base import NotifierBase

log = get_logger("afs_callbacks.integrations._base")  # where these always logged

_F = TypeVar("_F", bound=Callable[..., Any])


def hook(method: _F) -> _F:
    """Run a hook body so that no exception reaches the framework; log each hook's first
    failure (a per-step hook would flood the log)."""

    @functools.wraps(method)
    def guarded(self: NotifierBase, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception:
            hook_failed(self, method.__name__)
            return None

    return cast(_F, guarded)


def hook_failed(notifier: NotifierBase, name: str) -> None:
    """Log the first failure of hook ``name`` (with its traceback); later ones stay quiet.
    Call it from an ``except`` block: a hot hook guards its body inline, not with
    :func:`hook`, whose wrapper would pack the framework's keyword arguments once more."""
    if name not in notifier._failed_hooks:
        notifier._failed_hooks.add(name)
        log.exception("afs-callbacks: %s.%s failed; training continues", type(notifier).__name__, name)


def broadcast_run_id(run_id: str) -> str:
    """Rank zero's run id on every rank of an initialised ``torch.distributed`` group
    (else ``run_id`` unchanged). A collective: every rank must call it at the same point."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            box = [run_id]
            dist.broadcast_object_list(box, src=0)
            return str(box[0])
    except Exception:
        log.warning("afs-callbacks: could not share the run id between processes", exc_info=True)
    return run_id


__all__ = ["broadcast_run_id", "hook", "hook_failed"]
