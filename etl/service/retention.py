"""Retention: deleting old runs' output, never the latest committed run of a pipeline."""

from __future__ import annotations

from datetime import datetime

from etl.domain.outputs import RunOutput, choose_prunable
from etl.service.outputs import RunReader


def prune(
    reader: RunReader, output_path: str, *, keep_days: int, now: datetime, dry_run: bool = False
) -> list[RunOutput]:
    """Delete the runs of one pipeline that retention picks (see ``choose_prunable``) and
    return them; with ``dry_run`` only return them.

    Every picked run loses its ``_SUCCESS`` before anything else goes, so no reader
    trusts a run while its parts are being deleted.
    """
    doomed = choose_prunable(reader.runs(output_path), now=now, keep_days=keep_days)
    if dry_run or not doomed:
        return doomed
    present = {o.key for run in doomed for o in run.objects}
    markers = [run.success_key for run in doomed if run.success_key in present]
    reader.store.delete_keys(markers)
    reader.store.delete_keys(sorted(present - set(markers)))
    return doomed
