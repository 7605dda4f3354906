"""Where a run is scheduled: the cluster job facts that go in the run's context.

Read once when a run starts, from the scheduler's environment variables; nothing here
talks to the scheduler. Today: SLURM (job id, array job and task ids, node list), which
is what people search their scheduler's history by when a message says a run failed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: Context field -> SLURM variable; the first variable set wins for fields listed twice.
_SLURM_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("slurm_job_id", ("SLURM_JOB_ID", "SLURM_JOBID")),
    ("slurm_array_job_id", ("SLURM_ARRAY_JOB_ID",)),
    ("slurm_array_task_id", ("SLURM_ARRAY_TASK_ID",)),
    ("slurm_nodelist", ("SLURM_JOB_NODELIST", "SLURM_NODELIST")),
    ("slurm_restart_count", ("SLURM_RESTART_COUNT",)),
)


def slurm_context(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The SLURM job facts of this process (empty outside SLURM)."""
    env = os.environ if environ is None else environ
    facts: dict[str, str] = {}
    for field, names in _SLURM_FIELDS:
        for name in names:
            value = env.get(name, "").strip()
            if value:
                facts[field] = value
                break
    return facts


def slurm_job(environ: Mapping[str, str] | None = None) -> str | None:
    """The job as ``scontrol`` names it: ``ARRAYJOB_TASK`` for an array task, else the
    job id (None outside SLURM)."""
    facts = slurm_context(environ)
    if "slurm_array_job_id" in facts and "slurm_array_task_id" in facts:
        return f"{facts['slurm_array_job_id']}_{facts['slurm_array_task_id']}"
    return facts.get("slurm_job_id")


__all__ = ["slurm_context", "slurm_job"]
