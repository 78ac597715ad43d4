"""Adaptive softmax: exact loss on a hand-checked case, padding ignored, CLI end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from lmtrain.models.adaptive import AdaptiveSoftmaxOutput
from tests.conftest import invoke, tiny_config


def _tiny_layer() -> AdaptiveSoftmaxOutput:
    """Vocabulary 6, head = ids 0-2 plus one cluster entry, tail = ids 3-5 (div_value 1)."""
    layer = AdaptiveSoftmaxOutput(2, 6, [3], div_value=1.0)
    with torch.no_grad():
        layer.asm.head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -1.0]]))
        proj, out = layer.asm.tail[0]
        proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        out.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]]))
    return layer


def _by_hand(h: list[float], target: int) -> float:
    """log p(target | h) written out with plain Python numbers."""
    x, y = h
    head = [x, y, x + y, 0.5 * x - y]  # head logits: ids 0, 1, 2, then the tail cluster
    log_z = math.log(sum(math.exp(v) for v in head))
    if target < 3:
        return head[target] - log_z
    px, py = x, 2 * y  # tail projection
    tail = [px, py, -px + py]  # ids 3, 4, 5
    tail_z = math.log(sum(math.exp(v) for v in tail))
    return (head[3] - log_z) + (tail[target - 3] - tail_z)


def test_loss_equals_a_hand_computation_and_ignores_padding() -> None:
    layer = _tiny_layer()
    hs = [[0.3, -0.2], [1.0, 0.5], [-0.4, 0.8], [0.2, 0.1], [0.7, -0.6]]
    targets = [1, 4, 0, 5, 3]  # the third row is padding
    hidden, tgt = torch.tensor(hs), torch.tensor(targets)
    expected = [0.0 if t == 0 else -_by_hand(h, t) for h, t in zip(hs, targets, strict=True)]
    assert layer.token_nll(hidden, tgt).tolist() == pytest.approx(expected, rel=1e-6)
    assert layer.nll(hidden, tgt).item() == pytest.approx(sum(expected), rel=1e-6)
    # Full distribution: the same numbers, and each row sums to 1.
    lp = layer.log_probs(hidden)
    assert lp.shape == (5, 6)
    assert lp.exp().sum(-1).tolist() == pytest.approx([1.0] * 5, rel=1e-6)
    assert lp[1, 4].item() == pytest.approx(_by_hand(hs[1], 4), rel=1e-6)


def test_padding_gets_no_gradient() -> None:
    layer = _tiny_layer()
    hidden = torch.randn(3, 2, requires_grad=True)
    layer.nll(hidden, torch.tensor([0, 4, 0])).backward()
    assert hidden.grad[0].abs().sum().item() == 0.0
    assert hidden.grad[2].abs().sum().item() == 0.0
    assert hidden.grad[1].abs().sum().item() > 0.0


@pytest.mark.parametrize("cutoffs", [[0, 3], [4, 4], [5, 3], [2, 6]])
def test_bad_cutoffs_name_the_key_and_the_vocabulary_size(cutoffs: list[int]) -> None:
    with pytest.raises(
        ValueError, match=r"model\.adaptive_softmax\.cutoffs: .* 1 and 5 \(the vocabulary has 6"
    ):
        AdaptiveSoftmaxOutput(4, 6, cutoffs)


def test_cli_trains_evaluates_and_samples(tmp_path: Path, tiny_files: dict, cli) -> None:
    cfg = tiny_config(
        tmp_path, tiny_files, "model.adaptive_softmax.cutoffs=[6,12]", "train.max_steps=30"
    )
    config = tmp_path / "asm.yaml"
    config.write_text(cfg.to_yaml())
    res = invoke(cli, "fit", config, "--quiet")
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    assert saved["model"]["adaptive_softmax"]["cutoffs"] == [6, 12]

    res = invoke(cli, "eval", tmp_path / "run", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    vocab = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["vocab"]
    size = len(vocab["itos"])
    # Learned something: clearly better than a uniform guess over the vocabulary.
    assert out["loss"] < math.log(size) - 0.5
    assert out["ppl"] == pytest.approx(math.exp(out["loss"]))
    # eval's batch size never changes the figure (the padding id never counts).
    again = json.loads(invoke(cli, "eval", tmp_path / "run", "--json", "--batch-size", "3").stdout)
    assert again["loss"] == pytest.approx(out["loss"], rel=1e-9)

    res = invoke(
        cli, "sample", tmp_path / "run", "--prompt", "the", "--max-tokens", "12", "--seed", "0"
    )
    assert res.exit_code == 0, res.output
    words = res.stdout.split()
    assert words[0] == "the" and len(words) >= 12
    assert "<pad>" not in words


def test_cli_cutoff_beyond_the_vocabulary_is_dropped_with_one_line(
    tmp_path: Path, tiny_files: dict, cli
) -> None:
    # Issue 16: a recipe's cutoffs must not stop a run on a corpus with a smaller vocabulary.
    # The ones the vocabulary cannot hold are dropped, the line says what was used, and `eval`
    # rebuilds the same layer from the checkpoint's config and vocabulary.
    cfg = tiny_config(
        tmp_path, tiny_files, "model.adaptive_softmax.cutoffs=[5,500]", "train.max_steps=6"
    )
    config = tmp_path / "asm.yaml"
    config.write_text(cfg.to_yaml())
    res = invoke(cli, "fit", config)
    assert res.exit_code == 0, res.output
    size = len(torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["vocab"]["itos"])
    assert (
        f"model.adaptive_softmax.cutoffs [5, 500]: the vocabulary has only {size:,} entries, "
        "so using [5]"
    ) in res.stderr
    assert "Traceback" not in res.output
    res = invoke(cli, "eval", tmp_path / "run", "--json")
    assert res.exit_code == 0, res.output
    assert math.isfinite(json.loads(res.stdout)["loss"])
