"""One rank of a multi-process test run, started by tests/runtime/test_distributed.py.

    python tests/runtime/dist_worker.py CONFIG_JSON OUT_DIR [--resume] [--die-at STEP]

The environment carries RANK, WORLD_SIZE, MASTER_ADDR/PORT as torchrun would set them. Each rank
works in its own directory OUT_DIR/rankR with a relative run.dir, so the files each process
writes can be told apart; the per-step losses go to OUT_DIR/losses-rankR.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from lmtrain.config import config_from_dict
from lmtrain.errors import LmtrainError
from lmtrain.training import fit
from lmtrain.training.loop import Trainer


def main() -> int:
    raw = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2]).resolve()
    resume = "auto" if "--resume" in sys.argv else None
    rank = int(os.environ["RANK"])
    if "--die-at" in sys.argv and rank == 1:
        die_at = int(sys.argv[sys.argv.index("--die-at") + 1])
        step = Trainer.train_step

        def dying_step(self: Trainer, batch):  # noqa: ANN001, ANN202
            if self.progress.step == die_at:
                os._exit(17)  # a crash: no cleanup, no goodbye to the other ranks
            return step(self, batch)

        Trainer.train_step = dying_step  # type: ignore[method-assign]
    work = out / f"rank{rank}"
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    try:
        step_losses: dict[int, float] = {}
        result = fit(
            config_from_dict(raw), resume=resume, quiet=True, echo=print, on_log=step_losses.update
        )
    except LmtrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    losses = {"losses": step_losses, "best_val_loss": result.progress.best_val_loss}
    (out / f"losses-rank{rank}.json").write_text(json.dumps(losses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
