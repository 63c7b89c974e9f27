"""One run's full configuration: what `oner_lab.train.run` takes.

These models are structural (types, ranges, unknown keys). Checks that need the
project's code (term names, preset dimensions, tokenizer directories) live in
`oner_lab.train.validate`, which the CLI calls on every run before dispatching any.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    PositiveInt,
    SerializeAsAny,
)

from oner_lab.presets import PRESETS
from oner_lab.spec.identity import Operational
from oner_lab.spec.paths import PathStr
from oner_lab.spec.section import Section
from oner_lab.spec.units import Unit


class ModelConfig(Section):
    """The tower. `preset` gives every dimension; any field set here overrides it."""

    preset: Literal[tuple(PRESETS)] = "tiny"  # type: ignore[valid-type]  (the names of oner_lab/presets.py)
    width: PositiveInt | None = None
    depth: PositiveInt | None = None
    num_heads: PositiveInt | None = None
    mlp_ratio: float | None = Field(default=None, gt=0)
    patch_size: PositiveInt | None = None
    image_size: PositiveInt | None = None
    max_text_len: PositiveInt | None = None
    proj_dim: PositiveInt | None = None
    head: Literal["shared", "per_modality"] = "shared"
    drop_path: float = Field(default=0.0, ge=0, lt=1)


class ObjectiveConfig(Section):
    """Which terms are trained and how. See docs/objectives.md for every [reading] choice."""

    variant: str | None = Field(
        default=None, description="a named term set (itc_two_heads, itc, xmc, xmc_cic, oner, oner_cumulative)"
    )
    terms: dict[str, NonNegativeFloat] = Field(
        default_factory=dict, description="term name -> weight; added to (or overriding) the variant's terms"
    )
    masked_terms: bool = Field(default=True, description="false drops mlm/mim/mmm: a purely contrastive ablation")
    contrast_masked_views: bool = Field(
        default=False,
        description="true: ITC/XMC contrast the global tokens of the MIM/MLM passes instead of clean passes",
    )
    targets: Literal["momentum", "online"] = Field(
        default="momentum", description="[reading] encoder of the right-hand side of XMC/CIC/CMC"
    )
    temperature_init: float = Field(default=0.07, gt=0)
    temperature_min: float = Field(default=0.01, gt=0)
    learn_temperature: bool = True
    momentum: float = Field(default=0.99, ge=0, le=1, description="EMA momentum at step 0, cosine to momentum_end")
    momentum_end: float = Field(default=1.0, ge=0, le=1)
    mlm_prob: float = Field(default=0.15, gt=0, lt=1)
    mim_ratio: float = Field(default=0.6, gt=0, lt=1)
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="term name -> that term's own options (each term declares their keys; docs/objectives.md)",
    )


class EvalSourceConfig(Unit):
    """A zero-shot eval set, named by its key in `data.eval_sources`: `format` names the unit that reads it
    (retrieval_json, karpathy, class_folders, or one a plugin registers; oner_lab/evaluators, docs/analysis.md).

    A unit subclasses this with its own typed settings, sets `task` (the scoring task, which declares
    the metrics it logs) and implements `check` and `read`. A format with no required setting (the
    built-in `shapes` and `shapes_cls`) may also be named directly in `eval.sets`.
    """

    tag: ClassVar[str] = "format"
    builtins: ClassVar[str] = "oner_lab.evaluators"
    units: ClassVar[dict[str, type[Unit]]] = {}
    task: ClassVar[str] = ""

    format: str = Field(description="the eval set format: retrieval_json, karpathy, class_folders, or a plugin's")

    def check(self) -> None:
        """Raise `EvalSourceError` if the files cannot be read as this format (structure, image files)."""

    def read(self, name: str, context: Any) -> tuple[Any, int]:
        """(the loaded set, corrupt samples skipped); `context` is an `evaluators.registry.ReadContext`."""
        raise NotImplementedError(f"eval set format {self.format!r} does not implement read")

    @classmethod
    def builtin_sets(cls) -> list[str]:
        """Formats usable by name alone in `eval.sets`: those whose every setting has a default."""
        return [
            kind
            for kind, unit in cls.registered().items()
            if all(not field.is_required() for key, field in unit.model_fields.items() if key != cls.tag)
        ]


class UnpairedSourceConfig(Section):
    """Unpaired training data mixed into every step: captions for MLM only, or images for MIM only (docs/data.md)."""

    urls: PathStr | list[PathStr] = Field(
        description="text_only: plain-text files, one caption per line; image_only: webdataset tar shards or "
        "directories of image files (searched recursively); patterns expand like data.urls"
    )
    batch_size: PositiveInt = Field(
        description="unpaired samples per global step, split over ranks like train.batch_size"
    )


class TrainSourceConfig(Unit):
    """The paired training data, `data.source: {kind: ..., <the kind's own keys>}`: `shapes` (built-in
    generated data), `webdataset`, `csv`, `karpathy`, `retrieval_json`, or a kind a plugin registers
    (units in oner_lab/data/train_sources; docs/data.md).

    A unit subclasses this with its own typed keys and implements `check` (ConfigError naming
    `data.source.<key>`) and `train` (the tokenizer and the training stream)."""

    tag: ClassVar[str] = "kind"
    builtins: ClassVar[str] = "oner_lab.data.train_sources"
    units: ClassVar[dict[str, type[Unit]]] = {}

    kind: str = Field(description="shapes, webdataset, csv, karpathy, retrieval_json, or a plugin's")

    def check(self, data: Any, files: bool) -> None:
        """Raise ConfigError for settings that cannot run; `files=False` reads no file (a dry run)."""

    def train(self, context: Any) -> tuple[Any, Any, int]:
        """(tokenizer, training stream, corrupt samples skipped while reading); `context` is a
        `data.train_sources.base.TrainContext`."""
        raise NotImplementedError(f"data source {self.kind!r} does not implement train")


class DataConfig(Section):
    """Training and evaluation data. `source: {kind: shapes}` is the built-in generated dataset; the
    readers of real formats (webdataset shards, CSV, retrieval JSON, class folders) are in docs/data.md."""

    source: SerializeAsAny[TrainSourceConfig] = Field(
        default_factory=lambda: {"kind": "shapes"},  # type: ignore[arg-type,return-value]  (validated into ShapesSource)
        validate_default=True,
        description="the paired training data: a mapping with `kind` and that kind's keys (docs/data.md)",
    )
    shuffle_buffer: PositiveInt = Field(default=10000, description="samples in one shuffle window of a real source")
    workers: Annotated[PositiveInt, Operational("threads only; batches are a pure function of (seed, step)")] = Field(
        default=4, description="decoding threads of a real source"
    )
    text_only: UnpairedSourceConfig | None = Field(
        default=None, description="caption files trained with MLM only, beside the paired data (needs the mlm term)"
    )
    image_only: UnpairedSourceConfig | None = Field(
        default=None,
        description="image shards or folders trained with MIM only, beside the paired data (needs the mim term)",
    )
    eval_sources: dict[str, SerializeAsAny[EvalSourceConfig]] = Field(
        default_factory=dict, description="eval set name -> files; `eval.sets` may name these besides the built-in sets"
    )
    cache_dir: Annotated[
        PathStr, Operational("where derived files are kept; their content is keyed by what they hold")
    ] = Field(default="data_cache", description="where generated shards, shard indexes and the tokenizer are written")
    train_size: PositiveInt = 20000
    eval_images: PositiveInt = 1000
    cls_images_per_class: PositiveInt = 10
    max_objects: PositiveInt = 2
    generator_seed: int = 0
    tokenizer: PathStr | None = Field(
        default=None, description="a local Hugging Face tokenizer directory; default: train WordPiece"
    )
    vocab_size: PositiveInt = 512
    crop_scale: tuple[float, float] = Field(
        default=(0.9, 1.0), description="RandomResizedCrop scale; mild for shapes, whose captions name positions"
    )
    hflip: bool = Field(default=False, description="off: captions name left/right positions")
    on_corrupt: Annotated[
        Literal["skip", "fail"], Operational("a run that finishes under 'fail' read what 'skip' reads")
    ] = "skip"


class TrainConfig(Section):
    """Optimisation: AdamW, linear warm-up then cosine decay, gradient clipping."""

    seed: int = 0
    batch_size: PositiveInt = 128
    steps: PositiveInt = 1000
    lr: float = Field(default=1e-3, gt=0)
    min_lr: float = Field(default=1e-5, ge=0)
    warmup_steps: int = Field(default=50, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float | None = Field(default=1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto: bf16 autocast on CUDA, fp32 on CPU"
    )
    device: Annotated[str, Operational("where it runs; precision is its own (identity) field")] = Field(
        default="auto", description="auto, cpu, cuda, cuda:N"
    )
    checkpoint_every: Annotated[
        PositiveInt, Operational("a resumed run continues exactly (RNG and data position restored)")
    ] = 200
    keep_checkpoints: Annotated[
        PositiveInt, Operational("how many old checkpoints stay on disk; none changes what is learned")
    ] = Field(
        default=2,
        description="how many of the newest checkpoints stay (last.pt, last.pt.1, ...); a resume tries them "
        "newest first and skips, with a warning, one that does not load (docs/reliability.md)",
    )
    loss_spike_factor: float | None = Field(
        default=None,
        gt=1,
        description="stop the run (naming step and term) when the loss exceeds this factor times the median of the last "
        "100 steps' losses; null: off. The last checkpoint before the spike is kept",
    )
    log_every: Annotated[PositiveInt, Operational("cadence of training-loss logging, not of evaluation")] = 10
    threads: Annotated[
        int | None,
        Operational("CPU intra-op threads: float reduction order changes, as on another GPU; the recipe does not"),
    ] = Field(default=None, ge=1, description="torch intra-op threads on CPU; default: torch's choice")
    activation_checkpointing: Annotated[
        bool, Operational("recomputes the same activations in backward: same losses and gradients")
    ] = Field(
        default=False,
        description="recompute the tower's block activations in backward (less memory, ~1/3 more compute, same losses)",
    )
    compile: Annotated[
        bool, Operational("the same maths through fused kernels: float rounding differs, as on another GPU")
    ] = Field(
        default=False,
        description="torch.compile each of the tower's blocks (docs/gpu.md); the first steps are slower while it compiles",
    )
    init_from: PathStr | None = Field(
        default=None,
        description="fine-tuning: the name of another grid variant (its FINISHED run with the same seed and axes) or a path "
        "to a .pt checkpoint; its model and momentum weights and its tokenizer are the start (step 0, fresh optimizer)",
    )


class EvalConfig(Section):
    """Zero-shot evaluation, run at the end and every `every_steps` if set."""

    sets: list[str] = Field(default_factory=lambda: ["shapes", "shapes_cls"])
    every_steps: PositiveInt | None = None
    batch_size: Annotated[PositiveInt, Operational("retrieval and classification scores do not depend on it")] = 256


class RunConfig(Section):
    """Everything one training run needs; its identity fields are hashed (`oner_lab.spec.identity`)
    to name its run directory and dedupe it."""

    plugins: list[str] = Field(
        default_factory=list,
        description="modules imported before validation and training: each registers objective terms, data sources "
        "or eval set formats defined outside oner_lab (docs/objectives.md, docs/data.md, docs/analysis.md)",
    )

    model: ModelConfig = Field(default_factory=ModelConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
