"""The model section of the config, its checks and the sizes the memory estimate needs.

The cell table (`CELLS`) and the rule that picks the hand-built stack (`custom_features`) live
here, beside the keys they read, and lmtrain/models/cells.py builds from them; this module
imports no torch, so that loading a config stays light. Defaults are written only here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Literal

from lmtrain.records import OneOf

Init = Literal["default", "orthogonal", "identity"]


@dataclass(frozen=True)
class CellSpec:
    """One recurrent cell: where its code is, and what the config checks and counts of it."""

    layer: str
    """The class that runs one layer of it in the hand-built stack (cells.py), as
    `module:Class`, imported when a model is built so that this table stays torch-free. The
    class is built as `Class(model_config, input_size)`, runs `forward(x (T, B, In), state,
    mask (T, B, 1) or None) -> (out (T, B, H), state)` over one tuple of (B, width) state
    parts, and says the widths of those parts with `Class.state_widths(model_config)`; where the
    last of them are dropout masks drawn once per sequence, `Class.mask_parts(model_config)`
    says how many (lm.py starts them undrawn)."""
    gates: int
    """Gate blocks its weight matrices stack (LSTM: i, f, g, o; GRU: r, z, n)."""
    torch: bool = False
    """nn.RNN/LSTM/GRU runs it when no feature of the hand-built stack is asked for."""
    recurrent: bool = True
    """Its gates read h_{t-1} through a hidden-to-hidden matrix (weight_hh, bias_hh). False:
    they read the inputs only, with one weight matrix and one bias per layer."""
    takes: frozenset[str] = frozenset()
    """The options that only some cells take (`ModelConfig.cell_options`, and model.leak)
    which this one takes."""
    refusals: Mapping[str, str] = field(default_factory=dict)
    """Why it refuses an option of `ModelConfig.cell_options`, where naming the cells that take
    it would not say enough: the end of the message after `not available with <cell>`."""


IN_CELL = frozenset({"layer_norm", "recurrent_dropout", "init"})
"""The options of the cells with a hidden-to-hidden matrix, which the hand-built cells
(cells.py) apply inside the step."""
_MANUAL = ", whose hand-written BPTT is the plain tanh RNN; use rnn_tanh for it"
_INPUTS_ONLY = {
    "layer_norm": ", whose gates read the inputs only; model.pre_norm normalises each layer's "
    "input instead"
}
QRNN_WINDOW = 2
"""model.qrnn_window's default: the width of the QRNN's convolution in Bradbury et al.'s
language models."""

CELLS: dict[str, CellSpec] = {
    "rnn_tanh": CellSpec(
        "lmtrain.models.cells:RecurrentLayer", 1, torch=True, takes=IN_CELL | {"leak"}
    ),
    "rnn_relu": CellSpec(
        "lmtrain.models.cells:RecurrentLayer", 1, torch=True, takes=IN_CELL | {"leak"}
    ),
    "lstm": CellSpec("lmtrain.models.cells:RecurrentLayer", 4, torch=True, takes=IN_CELL),
    "gru": CellSpec("lmtrain.models.cells:RecurrentLayer", 3, torch=True, takes=IN_CELL),
    "rnn_manual": CellSpec(
        "lmtrain.models.manual_rnn:ManualRNNLayer",
        1,
        takes=frozenset({"init"}),
        refusals={"layer_norm": _MANUAL, "recurrent_dropout": _MANUAL},
    ),
    "qrnn": CellSpec(
        "lmtrain.models.qrnn:QRNNLayer",
        3,
        recurrent=False,
        takes=frozenset({"qrnn_window", "zoneout"}),
        refusals=_INPUTS_ONLY,
    ),
    "mingru": CellSpec(
        "lmtrain.models.minrnn:MinGRULayer", 2, recurrent=False, refusals=_INPUTS_ONLY
    ),
    "minlstm": CellSpec(
        "lmtrain.models.minrnn:MinLSTMLayer", 3, recurrent=False, refusals=_INPUTS_ONLY
    ),
}
"""Every cell by name: the values model.cell takes. A new cell is its module (one layer of it,
as `CellSpec.layer` describes) and a row here, or a `register` call from its own module."""

Cell = Annotated[str, OneOf(CELLS)]


def register(name: str, spec: CellSpec) -> CellSpec:
    """Add a cell to CELLS under `name`, which model.cell then accepts and build_model builds."""
    if name in CELLS:
        raise ValueError(f"a cell named {name!r} is already registered")
    CELLS[name] = spec
    return spec


IDENTITY_GAIN = 0.25
"""model.init_gain's default with init: identity: the IRNN's recurrent matrix starts as this
times I. Chosen by measurement from the quickstart's optimiser at sizes 2 x 32 to 2 x 256 and
windows 16 to 128 (the README's toolbox section gives the runs): an exact identity's carried
state and loss blow up, gains from 0.9 down train better and better, and below this one the
gain matters little while the matrix keeps ever less of the identity."""
LEAK_START = 0.1
"""Where model.learn_leak starts each unit's leak when model.leak is null. Chosen by
measurement as IDENTITY_GAIN was: larger starts trained worse, and 0.5 diverged at 2 x 256."""

AUTO_HEAD = 2000
"""model.adaptive_softmax.auto: words in the head (the most frequent ones)."""
AUTO_GROWTH = 5
"""model.adaptive_softmax.auto: each cluster is this many times the size of the one before."""
AUTO_MAX_CLUSTERS = 23
"""model.adaptive_softmax.auto: the most tail clusters a vocabulary within the config's integer
range gets (2,000 x 5 ** k < 2 ** 63), for the div_value overflow check."""


@dataclass(frozen=True)
class AdaptiveSoftmaxConfig:
    cutoffs: list[int] = field(default_factory=list)
    """Adaptive softmax cluster boundaries by vocabulary id, increasing; [] = full softmax."""
    div_value: float = 4.0
    """Each tail cluster's projection is this many times narrower than the previous one."""
    auto: bool = False
    """Choose the cutoffs from the vocabulary size when `cutoffs` is [] (a 2,000-word head; none under 4,000 words)."""

    def cutoffs_for(self, vocab_size: int) -> list[int]:
        """The cutoffs a vocabulary of `vocab_size` entries gets: the explicit list without the
        ids it does not hold, else (with `auto`) the rule below, else [] (full softmax).

        The rule follows Grave et al. 2017's published settings: a head of 2,000 words (their
        Penn Treebank and text8 runs, and this project's WikiText-2 recipe), each further
        cluster 5 times the one before, kept while it starts in the first half of the
        vocabulary. That gives [2000] for 10,000 words, [2000, 10000] for 33,278 or 44,000, and
        no clusters under 4,000 words, where the full softmax is cheap.
        """
        if self.cutoffs:
            return [c for c in self.cutoffs if c < vocab_size]
        if not self.auto:
            return []
        chosen: list[int] = []
        cutoff = AUTO_HEAD
        while cutoff <= vocab_size // 2:
            chosen.append(cutoff)
            cutoff *= AUTO_GROWTH
        return chosen

    def tail_widths(self, hidden_size: int) -> list[int] | None:
        """Projection width of each tail cluster, as torch computes it; None if a power of
        div_value overflows (torch would fail building the layer) or div_value is below 1.
        With `auto` and no explicit cutoffs, as many clusters as the largest vocabulary gets."""
        clusters = len(self.cutoffs) or (AUTO_MAX_CLUSTERS if self.auto else 0)
        if not self.div_value >= 1:
            return None
        try:
            return [int(hidden_size // self.div_value ** (i + 1)) for i in range(clusters)]
        except OverflowError:
            return None


@dataclass(frozen=True)
class ModelConfig:
    cell: Cell = "lstm"
    """Recurrent cell: rnn_tanh, rnn_relu, lstm, gru, rnn_manual (tanh RNN, hand-written BPTT), or qrnn, mingru, minlstm (gates from the inputs only, trained in parallel over time)."""
    embedding_dim: int = 128
    """Size of the token embedding."""
    hidden_size: int = 256
    """Size of each recurrent layer's hidden state."""
    num_layers: int = 2
    """Number of stacked recurrent layers."""
    dropout: float = 0.0
    """Dropout between recurrent layers and before the decoder (0 = off)."""
    tie_weights: bool = False
    """Share the embedding matrix with the decoder (needs embedding_dim == hidden_size)."""
    adaptive_softmax: AdaptiveSoftmaxConfig = field(default_factory=AdaptiveSoftmaxConfig)
    """Adaptive softmax (Grave et al. 2017): `cutoffs` ids ([] = full softmax; ids past the vocabulary are dropped) or `auto: true` to choose them from the vocabulary size."""
    layer_norm: bool = False
    """rnn_tanh, rnn_relu, lstm, gru: layer-normalise the input and the recurrent pre-activations separately before tanh/relu/sigmoid (the LSTM also c_t before its tanh), with a learned gain (Ba et al. 2016)."""
    recurrent_dropout: float = 0.0
    """rnn_tanh, rnn_relu, lstm, gru: in training, drop units of the candidate update (RNN update, LSTM g_t, GRU n_t), never the memory itself; sentences mode draws one mask per sequence, kept over all its windows and saved with the carried state; stream mode one per window (Semeniuta et al. 2016; 0 = off)."""
    locked_dropout: float = 0.0
    """In training, drop the same units of each layer's input and of the last output at every step of a window; a new mask each window, in both modes (Gal & Ghahramani 2016; 0 = off)."""
    embedding_dropout: float = 0.0
    """In training, drop whole words (rows of the embedding matrix) for the window, scaling the rest by 1 / (1 - p) (Gal & Ghahramani 2016; 0 = off)."""
    leak: float | None = None
    """rnn_tanh, rnn_relu: leaky units, h_t = leak * h_{t-1} + (1 - leak) * update, in [0, 1); null = 0 (the plain cell), or with learn_leak a start of 0.1."""
    learn_leak: bool = False
    """rnn_tanh, rnn_relu: learn the leak of each unit, kept in (0, 1) by a sigmoid, starting from `leak` (null: 0.1)."""
    init: Init = "default"
    """Recurrent weights: default (PyTorch's), orthogonal (Saxe et al. 2014: each gate block a random orthogonal matrix), or identity (each gate block I, recurrent biases 0; with rnn_relu the IRNN of Le et al. 2015)."""
    init_gain: float | None = None
    """The identity or orthogonal recurrent init is multiplied by this, in (0, 1]; null = the init's own: 0.25 for identity (an exact identity never forgets, so an IRNN's carried state and loss blow up), 1 for orthogonal."""
    residual: bool = False
    """Add each recurrent layer's input to its output where their sizes match (the first layer only when embedding_dim == hidden_size)."""
    pre_norm: bool = False
    """Layer-normalise each recurrent layer's input before the layer reads it (with residual: x + layer(LN(x)), the pre-norm residual block of deep stacks)."""
    dense: bool = False
    """Feed each recurrent layer the embedding and the outputs of every layer below it, concatenated (the densely connected QRNN stack of Bradbury et al. 2017); not with residual."""
    learn_initial_state: bool = False
    """Learn h0 (and c0) of every layer as parameters, starting at 0: the state each sequence starts from in sentences mode; in stream mode only the first window's (later windows carry the state on)."""
    weight_drop: float = 0.0
    """DropConnect probability on the hidden-to-hidden weights (AWD-LSTM weight drop; qrnn, mingru and minlstm, which have none, on their input weights; 0 = off)."""
    qrnn_window: int = QRNN_WINDOW
    """qrnn: the inputs each step's gates read, 1 (x_t) or 2 (x_t and x_{t-1}, a masked convolution of width 2)."""
    zoneout: float = 0.0
    """qrnn: zoneout on the forget gate, each unit keeping its state at a step with this probability in training (Bradbury et al. 2017; 0 = off)."""
    pretrained_embeddings: str | None = None
    """Word vectors file (GloVe text, word2vec text or binary) to initialise the embedding; null = none."""
    pretrained_format: Literal["auto", "glove", "word2vec_text", "word2vec_binary"] = "auto"
    """Format of model.pretrained_embeddings; auto detects it from the file's first bytes."""
    freeze_embeddings: bool = False
    """Keep the embedding matrix fixed during training (e.g. pretrained vectors)."""

    def __post_init__(self) -> None:
        # An older lmtrain wrote init_gain 1.0 and leak 0.0 into every config it saved, where
        # they meant what null means now (no gain with init: default, orthogonal's own gain of
        # 1, no leak); read as null, its checkpoints resume with the same config as before.
        if self.init_gain == 1.0 and self.init != "identity":
            object.__setattr__(self, "init_gain", None)
        if self.leak == 0.0 and not self.learn_leak:
            object.__setattr__(self, "leak", None)

    def resolved_init_gain(self) -> float:
        """The gain model.init is multiplied by: init_gain, or the init's own (IDENTITY_GAIN for
        identity, 1 otherwise)."""
        if self.init_gain is not None:
            return self.init_gain
        return IDENTITY_GAIN if self.init == "identity" else 1.0

    def resolved_leak(self) -> float:
        """The leak of every unit (its start with learn_leak): leak, or 0 (LEAK_START with
        learn_leak)."""
        if self.leak is not None:
            return self.leak
        return LEAK_START if self.learn_leak else 0.0

    def own_defaults(self) -> list[str]:
        """A line for each remedy switched on whose setting this config leaves to the remedy's
        own default (a null key), saying the value used; fit prints them as it starts."""
        lines = []
        if self.init == "identity" and self.init_gain is None:
            lines.append(
                f"model.init_gain: null, so init identity's own gain {IDENTITY_GAIN}: the "
                f"recurrent matrix starts as {IDENTITY_GAIN} x I (set model.init_gain to choose; "
                "1 is the exact identity)"
            )
        if self.learn_leak and self.leak is None:
            lines.append(
                f"model.leak: null, so learn_leak starts every unit's leak at {LEAK_START} (set "
                "model.leak to choose)"
            )
        return lines

    def custom_features(self) -> list[str]:
        """The settings only the hand-built stack (cells.py) runs; nn.RNN/LSTM/GRU otherwise."""
        features = (
            (f"cell={self.cell}", not CELLS[self.cell].torch),
            ("layer_norm", self.layer_norm),
            ("recurrent_dropout", self.recurrent_dropout > 0),
            ("locked_dropout", self.locked_dropout > 0),
            ("leak", self.resolved_leak() > 0 or self.learn_leak),
            ("residual", self.residual),
            ("pre_norm", self.pre_norm),
            ("dense", self.dense),
        )
        return [key for key, on in features if on]

    def problems(self) -> list[str]:
        """Every out-of-range value and conflict of this section, as `model.key: message`."""
        p: list[str] = []

        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                p.append(f"model.{key}: {msg}")

        for name in ("embedding_dim", "hidden_size", "num_layers"):
            v = getattr(self, name)
            need(v >= 1, name, f"must be >= 1, got {v}")
        need(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        if self.tie_weights and self.embedding_dim != self.hidden_size:
            p.append(
                "model.tie_weights: tied weights need model.embedding_dim == model.hidden_size, "
                f"got {self.embedding_dim} and {self.hidden_size}; set them equal or "
                "tie_weights: false"
            )
        p += self._adaptive_softmax_problems()
        p += self._recurrent_problems()
        need(
            0.0 <= self.weight_drop < 1.0,
            "weight_drop",
            f"must be in [0, 1), got {self.weight_drop}",
        )
        # The cells without hidden-to-hidden weights drop their input weights, in any stack.
        recurrent = CELLS[self.cell].recurrent
        if self.weight_drop > 0 and recurrent and (custom := self.custom_features()):
            p.append(
                "model.weight_drop: applies to the nn.RNN/LSTM/GRU layers only, and model."
                + ", model.".join(custom)
                + " selects the hand-built stack; drop one of them"
            )
        if self.freeze_embeddings and self.tie_weights:
            p.append(
                "model.freeze_embeddings: a frozen embedding tied to the decoder would freeze the "
                "decoder too; set tie_weights: false or freeze_embeddings: false"
            )
        vectors = self.pretrained_embeddings
        need(
            vectors is None or "\0" not in vectors,
            "pretrained_embeddings",
            "must not contain a NUL character",
        )
        return p

    def _adaptive_softmax_problems(self) -> list[str]:
        a = self.adaptive_softmax
        if not (a.cutoffs or a.auto):
            return []
        p: list[str] = []
        ok = all(c is not None and c >= 1 for c in a.cutoffs) and all(
            x < y for x, y in zip(a.cutoffs, a.cutoffs[1:], strict=False)
        )
        if not ok:
            p.append(
                f"model.adaptive_softmax.cutoffs: must be increasing ids >= 1, got {a.cutoffs}"
            )
        if a.div_value < 1:
            p.append(
                "model.adaptive_softmax.div_value: must be >= 1 (each tail cluster is this many "
                f"times narrower), got {a.div_value}"
            )
        elif a.tail_widths(self.hidden_size) is None:
            p.append(
                f"model.adaptive_softmax.div_value: {a.div_value} ** "
                f"{len(a.cutoffs) or AUTO_MAX_CLUSTERS} (one power per tail cluster) overflows; "
                "use a smaller div_value"
            )
        if self.tie_weights:
            p.append(
                "model.tie_weights: cannot tie the embedding to an adaptive softmax; set "
                "tie_weights: false or model.adaptive_softmax.cutoffs: []"
                + (" and auto: false" if a.auto else "")
            )
        return p

    def _recurrent_problems(self) -> list[str]:
        """The recurrent toolbox (cells.py): ranges and which cells take what."""
        p: list[str] = []
        for name in ("recurrent_dropout", "locked_dropout", "embedding_dropout", "zoneout"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                p.append(f"model.{name}: must be in [0, 1), got {v}")
        gain, leak = self.init_gain, self.leak
        if gain is not None and not 0.0 < gain <= 1.0:
            p.append(f"model.init_gain: must be in (0, 1], got {gain}")
        elif gain is not None and self.init == "default":
            p.append("model.init_gain: scales init identity or orthogonal; set model.init too")
        if self.learn_leak and leak is not None and not 0.0 < leak < 1.0:
            p.append(f"model.leak: learn_leak needs a starting leak in (0, 1), got {leak}")
        elif leak is not None and not 0.0 <= leak < 1.0:
            p.append(f"model.leak: must be in [0, 1), got {leak}")
        spec = CELLS[self.cell]
        if (self.resolved_leak() > 0 or self.learn_leak) and "leak" not in spec.takes:
            p.append(
                f"model.leak: leaky units are for {_and(_taking('leak'))}, not {self.cell}; "
                "set model.leak=0 and model.learn_leak=false, or change model.cell"
            )
        if self.qrnn_window not in (1, 2):
            p.append(
                "model.qrnn_window: must be 1 (x_t) or 2 (x_t and x_{t-1}), the width of the "
                f"QRNN's convolution over the inputs; got {self.qrnn_window}"
            )
        for key, on in self.cell_options().items():
            if on and key not in spec.takes:
                why = spec.refusals.get(key) or f"; it applies to {', '.join(_taking(key))}"
                p.append(f"model.{key}: not available with {self.cell}{why}")
        if self.dense and self.residual:
            p.append(
                "model.dense: a dense stack concatenates each layer's input to its output and "
                "model.residual adds them; set one of them to false"
            )
        return p

    def cell_options(self) -> dict[str, bool]:
        """Whether each option that only some cells take (their `CellSpec.takes`) is asked for;
        model.leak has its own check above."""
        return {
            "layer_norm": self.layer_norm,
            "recurrent_dropout": self.recurrent_dropout > 0,
            "init": self.init != "default",
            "qrnn_window": self.qrnn_window != QRNN_WINDOW,
            "zoneout": self.zoneout > 0,
        }

    def parameter_count(self, vocab_size: int) -> int:
        """Parameters of a model of this config with `vocab_size` entries: embedding, recurrent
        weights and biases, output layer. Layer norm, learned state and leaks (a few per unit)
        are not counted, so this is a lower bound for the memory estimate."""
        # A layer's count is affine in its input width, so the sum over the layers is taken in
        # closed form: num_layers may be any integer the config reads (the checks bound it later).
        base, per_input = self._layer_parameters(0), self._layer_parameters(1)
        per_input -= base
        recurrent = self.num_layers * base + per_input * self._sum_of_input_sizes()
        return vocab_size * self.embedding_dim + recurrent + self._output_sizes(vocab_size)[0]

    def layer_input_sizes(self) -> list[int]:
        """The width of each recurrent layer's input: the embedding, then the layer below (with
        model.dense, the embedding and every layer below)."""
        e, h = self.embedding_dim, self.hidden_size
        if self.dense:
            return [e + k * h for k in range(self.num_layers)]
        return [e] + [h] * (self.num_layers - 1)

    def _sum_of_input_sizes(self) -> int:
        """sum(layer_input_sizes()), without building the list."""
        n, e, h = self.num_layers, self.embedding_dim, self.hidden_size
        if self.dense:
            return n * e + h * n * (n - 1) // 2
        return e + (n - 1) * h

    def _layer_parameters(self, input_size: int) -> int:
        """Weights and biases of one recurrent layer reading `input_size` features."""
        spec, h = CELLS[self.cell], self.hidden_size
        if spec.recurrent:  # W_ih, W_hh and two bias vectors, as nn.RNN/LSTM/GRU keep them
            return spec.gates * h * (input_size + h + 2)
        # W_ih over each input the step reads (x_t, or x_t and x_{t-1}) and one bias vector
        taps = self.qrnn_window if "qrnn_window" in spec.takes else 1
        return spec.gates * h * (taps * input_size + 1)

    def floats_per_token(self, vocab_size: int) -> int:
        """Activations a training step keeps per token for the backward pass: the embedding,
        each layer's gates and state, and the logits with their gradient."""
        layers = self.num_layers * (CELLS[self.cell].gates + 1) * self.hidden_size
        return self.embedding_dim + layers + 2 * self._output_sizes(vocab_size)[1]

    def _output_sizes(self, vocab_size: int) -> tuple[int, int]:
        """(parameters, logits per token) of the output layer for `vocab_size` entries."""
        h, a = self.hidden_size, self.adaptive_softmax
        cutoffs = a.cutoffs_for(vocab_size)  # the clusters the model will have
        if not cutoffs:
            return vocab_size + (0 if self.tie_weights else h * vocab_size), vocab_size
        head = cutoffs[0] + len(cutoffs)  # the frequent words and one entry per tail cluster
        bounds = [*cutoffs, max(vocab_size, cutoffs[-1] + 1)]
        # A div_value the checks refuse counts no tail projections: a lower bound still.
        widths = a.tail_widths(h) or [0] * len(cutoffs)
        tails = sum(widths[i] * (h + bounds[i + 1] - bounds[i]) for i in range(len(cutoffs)))
        return h * head + tails, head


def _taking(option: str) -> list[str]:
    """The cells that take `option`, in table order."""
    return [name for name, spec in CELLS.items() if option in spec.takes]


def _and(names: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
