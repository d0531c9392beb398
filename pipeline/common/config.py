"""The typed sections of the parameters (params.yaml): each knob's one default, in modules that import no torch,
so reading a configuration (and a stage with nothing to do) costs no heavy import.

    TunerConfig   the `tuner:` section plus the variant's wiring (variant_config: the method's ablations)
    TrainConfig   the `train:` section, the training recipe
    Template      how a text is written before tokenising (the `extract:` section's case and query template)
    RunConfig, FusionConfig, RagConfig, ScalingConfig, SweepConfig: the top-level knobs and the other sections
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import ConfigError

# Tuner sizes (`tuner.size` in the params): the block stack's shape. On SmolLM2-135M (width 576):
#   small    width 128, 2 blocks, FFN 2x:   0.56M parameters, 0.4% of the LLM (the first configurations)
#   reduced  width 224, 3 blocks, FFN 4x:   2.7M, about 2% (the paper's dimension-reduced variant: 0.13B on GPT-j)
#   paper    the LLM's width (no projection), 3 blocks, FFN 4x: 16M, about 12% (the paper: 0.8B on GPT-j-6B)
SIZES = {
    "small": dict(width=128, blocks=2, heads=4, ff_ratio=2),
    "reduced": dict(width=224, blocks=3, heads=7, ff_ratio=4),
    "paper": dict(width=None, blocks=3, heads=None, ff_ratio=4),  # heads of 64 dimensions, as in the LLM
}

KINDS = ("lmort", "pooled-linear", "pooled-concat", "scalar-mix")
SIMILARITIES = ("cosine", "dot")


@dataclass
class TunerConfig:
    llm_width: int
    stream_layer: int  # feeds the self-attention stream (the U-layer in LMORT)
    cross_layer: int  # keys and values of the cross-attention (the A-layer in LMORT)
    kind: str = "lmort"  # "lmort" (blocks), "pooled-linear", "pooled-concat" or "scalar-mix"
    # width, blocks, heads, ff_ratio: the `small` size of SIZES, the default configuration's
    width: int | None = SIZES["small"]["width"]  # width after the input projection; None = the LLM's, no projection
    blocks: int = SIZES["small"]["blocks"]
    heads: int | None = SIZES["small"]["heads"]  # None: width // 64
    ff_ratio: int = SIZES["small"]["ff_ratio"]
    out_dim: int = 256
    dropout: float = 0.1
    similarity: str = "cosine"  # "cosine" (with temperature) or "dot"
    temperature: float = 0.05
    attention_sink: bool = True  # mask position 0 out of attention keys and pooling
    pool_layers: list[int] | None = None  # pooled-concat / scalar-mix: the layers pooled and fused
    cross_layers: list[int] | None = None  # lmort: cross-attend to these layers at once instead of cross_layer

    def __post_init__(self):
        """A misspelt knob is an error when the config is built, not a silently different tuner."""
        if self.kind not in KINDS:
            raise ConfigError(f"tuner kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.similarity not in SIMILARITIES:
            raise ConfigError(f"tuner similarity must be one of {', '.join(SIMILARITIES)}, not {self.similarity!r}")

    @property
    def layers(self) -> list[int]:
        return sorted({self.stream_layer, self.cross_layer, *(self.pool_layers or []), *(self.cross_layers or [])})

    def to_dict(self) -> dict:
        return asdict(self)


MIN_STEPS = 500  # every scaling and sweep point trains at least this many steps (the one default)


CASES = ("keep", "lower")


@dataclass(frozen=True)
class Template:
    """How a text is written before tokenisation; part of every store's fingerprint, and what online encoding
    applies too, so stored and online vectors see the same text.

    case="lower" lower-cases every text first. The layers LMORT reads (0-2 on SmolLM2) are still lexical and
    cased: "CELL" and "cell" are different tokens, so an upper-case query shares no input with a lower-case
    passage. Normalising the input is exact for every word, costs nothing, and is what BM25 and MiniLM do;
    augmentation in training could only teach the cased forms it happens to see."""

    query: str = "{text}"
    passage: str = "{title}\n{text}"
    case: str = "lower"  # the one default of the case: ExtractConfig, the CLI and analyze() read it from here

    def __post_init__(self):
        if self.case not in CASES:
            raise ValueError(f"template case must be one of {', '.join(CASES)}, not {self.case!r}")

    def _cased(self, text: str) -> str:
        return text.lower() if self.case == "lower" else text

    def format_query(self, text: str) -> str:
        return self._cased(self.query.format(text=text))

    def format_passage(self, title: str, text: str) -> str:
        if not title.strip():
            return self._cased(text)
        if not text.strip():
            return self._cased(title)
        return self._cased(self.passage.format(title=title, text=text))


def unescape_newlines(text: str) -> str:
    """A template as written in YAML or on a command line: `\\n` for a newline (DVC runs each line of a command
    apart)."""
    return text.replace("\\n", "\n")


def template_of(params: dict) -> Template:
    """The `extract:` section's template: how the configuration's stores wrote their texts."""
    extract = params.get("extract") or {}
    return Template(query=unescape_newlines(str(extract.get("query_template", Template.query))),
                    case=extract.get("case", Template.case))


@dataclass
class TrainConfig:
    """The training recipe. These defaults are the default configuration's (params.yaml; a test holds them equal)."""

    batch_size: int = 32
    negatives: int = 1  # BM25 hard negatives per query (besides the in-batch ones)
    epochs: int = 6
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: float = 0.05  # fraction of all steps
    clip: float = 1.0
    patience: int = 2  # dev evaluations without improvement before stopping
    dev_every: int = 6  # epochs between dev evaluations (the last epoch is always evaluated): 6 = once, at the end
    seed: int = 0
    max_steps_per_epoch: int | None = None
    max_queries: int | None = None  # a seeded sample of this many training queries over all sets (scaling curve)
    mix_alpha: float = 0.5  # batches per training set proportional to (queries)^mix_alpha; see set_quotas
    memory_gb: float = 8.0  # stores' layers up to this size are loaded into memory; larger ones are streamed
    prefetch: int = 4  # batches read ahead by a background thread
    bf16: bool = True  # bf16 autocast (training, dev scoring) where the device computes bfloat16 natively


IO_ONLY = ("memory_gb", "prefetch")  # how batches are read, not what is computed: streamed == loaded (a test)


VARIANTS = ("lmort", "swapped", "a-only", "u-only", "emb-only", "last-only", "pooled-linear")
LAYER_FUSIONS = ("first-last", "scalar-mix", "lmort-multi")  # read several stored layers: need `stored_layers`


def variant_config(variant: str, *, u_layer: int, a_layer: int, last_layer: int, llm_width: int,
                   size: str | None = None, stored_layers: list[int] | None = None, **knobs) -> TunerConfig:
    """The method's ablations (DESIGN.md) as configs of one module, the layer pair (U, A) as the configuration
    names it, by keyword; `size` (a key of SIZES) sets the block stack's
    shape, and then width, blocks, heads and ff_ratio must not be given as well. The fusion baselines read
    the store's layers: first-last its first and last stored layer, scalar-mix and lmort-multi all of them."""
    if size is not None:
        if size not in SIZES:
            raise ConfigError(f"unknown tuner size {size!r}; choose from {', '.join(SIZES)}")
        both = sorted(set(SIZES[size]) & set(knobs))
        if both:
            raise ConfigError(f"tuner size {size!r} sets {', '.join(both)}; give either the size or those knobs")
        knobs = {**SIZES[size], **knobs}
    if variant in LAYER_FUSIONS:
        if not stored_layers or len(stored_layers) < 2:
            raise ConfigError(f"variant {variant!r} fuses several stored layers; the store has {stored_layers}")
        layers = sorted(stored_layers)
        if variant == "lmort-multi":
            return TunerConfig(llm_width=llm_width, stream_layer=u_layer, cross_layer=a_layer, kind="lmort",
                               cross_layers=layers, **knobs)
        pool = [layers[0], layers[-1]] if variant == "first-last" else layers
        kind = "pooled-concat" if variant == "first-last" else "scalar-mix"
        return TunerConfig(llm_width=llm_width, stream_layer=pool[0], cross_layer=pool[0], kind=kind,
                           pool_layers=pool, **knobs)
    wiring = {"lmort": (u_layer, a_layer), "swapped": (a_layer, u_layer), "a-only": (a_layer, a_layer),
              "u-only": (u_layer, u_layer), "emb-only": (0, 0), "last-only": (last_layer, last_layer),
              "pooled-linear": (a_layer, a_layer)}
    if variant not in wiring:
        raise ConfigError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS + LAYER_FUSIONS)}")
    stream, cross = wiring[variant]
    kind = "pooled-linear" if variant == "pooled-linear" else "lmort"
    return TunerConfig(llm_width=llm_width, stream_layer=stream, cross_layer=cross, kind=kind, **knobs)


@dataclass(frozen=True)
class RunConfig:
    """The top-level knobs of a configuration that a command's options also take."""

    model: str = "smollm2-135m"
    layer_selection: str = "6,0"  # (U, A) as "u,a"; `geometry` (the analysis' rule) or `dev` (the sweep's pick)
    baselines: str = "bm25,minilm,raw"
    eval_split: str = "test"


@dataclass(frozen=True)
class FusionConfig:
    """The `fusion:` section: which runs are fused with BM25's, and where their parameter is chosen."""

    variants: tuple[str, ...] = ("lmort", "pooled-linear")
    baselines: tuple[str, ...] = ("minilm-l6",)
    dev_split: str = "dev"
    zero_shot_dev: tuple[str, ...] = ("cacm",)
    zero_shot_split: str = "test"
    max_p: float = 0.05  # a dense weight is kept only where dev's fused run beats BM25's at this paired-t-test p
    tune_runs: tuple[dict, ...] = ({"data": "scifact", "split": "dev"}, {"data": "cacm", "split": "test"})


@dataclass(frozen=True)
class RagConfig:
    """The `rag:` section: answer quality, read by the configuration's LLM and by the span reader."""

    sets: tuple[str, ...] = ()
    questions: int = 500
    dev_questions: int = 64
    seed: int = 0
    systems: tuple[str, ...] = ("closed-book", "bm25", "minilm-l6", "lmort", "pooled-linear", "lmort+bm25", "oracle")
    orders: tuple[str, ...] = ("question-first", "passages-first")
    ks: tuple[int, ...] = (1, 3)
    max_new_tokens: int = 24  # the generative reader's longest answer
    batch_size: int = 16
    timing_questions: int = 50
    readers: tuple[str, ...] = ("generate", "span")
    prompts: tuple[str, ...] = ("plain", "few-shot", "constrained")
    shots: int = 2
    span_ks: tuple[int, ...] = (1, 3, 5)
    span_dev_questions: int = 1000


@dataclass(frozen=True)
class ScalingConfig:
    """The `scaling:` section: the data-scaling curve's points (none by default)."""

    variants: tuple[str, ...] = ()
    sizes: tuple[str | None, ...] = ()  # tuner sizes; none given: the `tuner:` section's own
    queries: tuple[int | str, ...] = ()
    min_steps: int = MIN_STEPS
    zero_shot: tuple[str, ...] = ()


@dataclass(frozen=True)
class SweepConfig:
    """The `sweep:` section: the (U, A) layer grid and the fusion baselines (none by default)."""

    layers: tuple | str = ()  # every ordered pair of these stored layers, or `all`
    pairs: tuple = ()
    baselines: tuple[str, ...] = ()
    size: str | None = None
    min_steps: int = MIN_STEPS
    test: tuple[str, ...] = ()


RUN, FUSION, RAG = RunConfig(), FusionConfig(), RagConfig()
SECTIONS = {"fusion": FusionConfig, "rag": RagConfig, "scaling": ScalingConfig, "sweep": SweepConfig}


def section(params: dict, name: str):
    """The typed `name:` section of `params` (lists as tuples); a knob the section does not have is an error."""
    cls = SECTIONS[name]
    raw = params.get(name) or {}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown `{name}:` parameters: {unknown} (known: {sorted(known)})")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def run_config(params: dict) -> RunConfig:
    """The top-level knobs of `params` (the ones it gives; the rest are RunConfig's)."""
    return RunConfig(**{f.name: params[f.name] for f in fields(RunConfig) if f.name in params})
