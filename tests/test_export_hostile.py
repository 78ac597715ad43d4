"""An export folder someone else prepared: a manifest that lists paths outside the folder, and
symbolic or hard links named like the export's files. A re-export replaces the links themselves,
never a file they lead to, and never a path the manifest names outside the folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import invoke, tiny_config, write_tiny_files
from lmtrain.checkpoint import load_model
from lmtrain.export import load_export
from lmtrain.training import fit


def test_a_hostile_manifest_and_links_change_nothing_outside_the_folder(
    tmp_path: Path, cli
) -> None:
    cfg = tiny_config(tmp_path, write_tiny_files(tmp_path), "train.max_steps=4")
    run = fit(cfg, quiet=True, echo=lambda _: None).run_dir
    out = tmp_path / "exp"
    assert invoke(cli, "export", run, "--out", out).exit_code == 0
    outside = {tmp_path / n: f"the user's {n}\n".encode() for n in ("victim", "a", "b", "c")}
    for path, data in outside.items():
        path.write_bytes(data)
    manifest = json.loads((out / ".lmtrain-export.json").read_text())
    manifest["files"] += ["../victim", str(tmp_path / "victim"), "../../victim"]
    (out / ".lmtrain-export.json").write_text(json.dumps(manifest))
    for name, target in (("config.json", "a"), ("README.md", "b")):
        (out / name).unlink()
        (out / name).symlink_to(tmp_path / target)
    (out / "vocab.json").unlink()
    os.link(tmp_path / "c", out / "vocab.json")

    r = invoke(cli, "export", run, "--out", out)
    assert r.exit_code == 0, r.output
    assert {p: p.read_bytes() for p in outside} == outside
    assert not any((out / n).is_symlink() for n in ("config.json", "README.md"))
    assert (out / "vocab.json").stat().st_ino != (tmp_path / "c").stat().st_ino
    assert load_export(out)[1].itos == load_model(run)[1].itos
