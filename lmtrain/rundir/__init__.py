"""The run directory: one object owns `run.dir` for the whole run.

    RUN/
      config.yaml                the resolved config of the newest session
      checkpoints/               last.pt, best.pt, step-NNNNNNNN.pt (see resume.py)
        abandoned-S-E/           a branch given up by a rewind: its checkpoints after step S, to E
      tb/                        TensorBoard events
      metrics.jsonl, results.json, export/
      .lmtrain/lock              held by the process that trains in RUN; names its pid
      .lmtrain/manifest.json     the run's id, its parent (for a fork), every file lmtrain wrote

Rules, each enforced in this package and nowhere else:

- One process at a time. The lock (flock, lock.py) is held from the start of `fit` to its end; a
  second `fit` on the same directory stops with exit 2 naming the holder's pid before touching
  anything. A lock left by a process that died is taken over, with a warning.
- lmtrain reads as its own, overwrites, prunes and deletes only files its manifest (manifest.py)
  lists. Names are added to the manifest *before* the file is written, so a crash never leaves a
  file lmtrain wrote that it does not know about. A new run refuses a directory holding anything
  else (refusals.py).
- Resume is decided once, by `open_directory` (start.py): new, continue, fork (a checkpoint of
  another run directory, into a new or empty one) or rewind (an older checkpoint of this run: the
  newer ones are moved aside, never overwritten or deleted; branches.py).

The other modules: layout.py (names, the error, atomic small writes), directory.py (RunDirectory:
claiming names, saving and pruning checkpoints), resume.py (the checkpoints folder's names,
listing and hard links).
"""

from lmtrain.rundir.directory import RunDirectory
from lmtrain.rundir.layout import OWNED_NAMES, RunDirectoryError
from lmtrain.rundir.start import Start, open_directory, open_run

__all__ = [
    "OWNED_NAMES",
    "RunDirectory",
    "RunDirectoryError",
    "Start",
    "open_directory",
    "open_run",
]
