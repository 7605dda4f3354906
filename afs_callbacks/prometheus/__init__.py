"""Run state and delivery health for Prometheus (the ``[prometheus]`` extra).

Two ways in, one set of series (:mod:`~afs_callbacks.prometheus.families` owns their names):

* :mod:`~afs_callbacks.prometheus.textfile`: each run's ``.prom`` file in node exporter's
  textfile folder (``AFS_PROMETHEUS_TEXTFILE_DIR``), written by a thread of the training
  process;
* ``afs-notify exporter`` (:mod:`afs_callbacks.exporter`): one ``/metrics`` per host, read
  from the store at each scrape.

Nothing here is imported unless one of them is used: ``import afs_callbacks`` never
imports ``prometheus_client``.
"""

from __future__ import annotations

#: What to run when ``prometheus_client`` is missing.
INSTALL_HINT = 'pip install "afs-callbacks[prometheus]"'

__all__ = ["INSTALL_HINT"]
