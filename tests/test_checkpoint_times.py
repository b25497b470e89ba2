"""Every rank's checkpoint write time reaches rank 0's manifest (and the `checkpoint written` event): each rank
other than 0 notes its time beside its file before it reports the step, rank 0 collects them when it completes the
checkpoint."""

from __future__ import annotations

import json

import numpy as np

from anytimectl.runtime import checkpoints


def _started(rank: int) -> float:
    """When each rank began gathering its state: rank 2 30 s ago, the others now."""
    import time

    return time.time() - (30.0 if rank == 2 else 0.0)


def test_the_manifest_records_every_ranks_write_time_and_their_maximum(tmp_path):
    events = []

    def checkpointer(rank: int) -> checkpoints.Checkpointer:
        return checkpoints.Checkpointer(tmp_path, 2, 2, rank, 3, None, lambda msg, **kw: events.append((msg, kw)))

    ranks = [checkpointer(rank) for rank in range(3)]
    for rank, c in enumerate(ranks):
        c.save(2, {"w": np.arange(100.0 * (rank + 1))}, {"examples": 64.0}, started=_started(rank))
    ranks[0].confirmed(2)
    manifest = checkpoints.read_manifest(tmp_path, 2)
    seconds = manifest["save_seconds_ranks"]
    assert len(seconds) == 3 and all(s is not None and s > 0 for s in seconds)
    assert seconds[2] >= 30.0 > seconds[0]  # rank 2 started gathering 30 s ago (see _started)
    assert manifest["save_seconds_max"] == max(seconds) and manifest["save_seconds"] == seconds[0]
    (message, fields), = events
    assert message == "checkpoint written" and fields["seconds_max"] == max(seconds)
    json.dumps(manifest)  # plain data
    # a rank whose note is missing (an older version wrote it, or it was lost) is None, the maximum of the rest
    for c in ranks:
        c.save(4, {"w": np.zeros(3)}, {}, started=None)
    checkpoints._seconds_path(tmp_path, 4, 1).unlink()
    ranks[0].confirmed(4)
    manifest = checkpoints.read_manifest(tmp_path, 4)
    assert manifest["save_seconds_ranks"][1] is None
    assert manifest["save_seconds_max"] == max(s for s in manifest["save_seconds_ranks"] if s is not None)

