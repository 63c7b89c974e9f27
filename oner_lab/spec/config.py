"""One run's full configuration: what `oner_lab.train.run` takes.

These models are structural (types, ranges, unknown keys). Checks that need the
project's code (term names, preset dimensions, tokenizer directories) live in
`oner_lab.train.validate`, which the CLI calls on every run before dispatching any.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
)

from oner_lab.spec.identity import Operational


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """The tower. `preset` gives every dimension; any field set here overrides it."""

    preset: Literal["tiny", "vit_s16", "vit_b16"] = "tiny"
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
        default=False, description="true: ITC/XMC contrast the global tokens of the MIM/MLM passes instead of clean passes"
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


class EvalSourceConfig(Section):
    """A zero-shot eval set read from files, named by its key in `data.eval_sources` (docs/data.md)."""

    format: Literal["retrieval_json", "karpathy", "class_folders"] = Field(
        description="retrieval_json: ALBEF/ViLT [{image, caption: [..]}]; karpathy: dataset_coco.json / "
        "dataset_flickr30k.json; class_folders: one folder of images per class"
    )
    path: str = Field(description="the JSON file, or the root holding one folder per class")
    image_root: str | None = Field(default=None, description="what image paths are relative to; default: the JSON's directory")
    split: str = Field(default="test", description="karpathy: the split read (test, val, train, restval)")
    class_names: str | None = Field(
        default=None,
        description="class_folders: a .txt (one name per line, sorted folder order) or .json (list, or folder -> name) "
        "file, or `imagenet1k` (WordNet folders named by timm's ImageNet-1k info); default: the folder names",
    )
    templates: str | None = Field(
        default=None, description="class_folders: a file with one prompt template per line, each holding {}; default: SLIP's seven"
    )


class UnpairedSourceConfig(Section):
    """Unpaired training data mixed into every step: captions for MLM only, or images for MIM only (docs/data.md)."""

    urls: str | list[str] = Field(
        description="text_only: plain-text files, one caption per line; image_only: webdataset tar shards or "
        "directories of image files (searched recursively); patterns expand like data.urls"
    )
    batch_size: PositiveInt = Field(description="unpaired samples per global step, split over ranks like train.batch_size")


class DataConfig(Section):
    """Training and evaluation data. `source: shapes` is the built-in generated dataset; the
    readers of real formats (webdataset shards, CSV, retrieval JSON, class folders) are in docs/data.md."""

    source: Literal["shapes", "webdataset", "csv", "karpathy", "retrieval_json"] = Field(
        default="shapes",
        description="shapes: built-in generated data; webdataset: tar shards at `urls`; csv: open_clip CSV/TSV files at `urls`; "
        "karpathy / retrieval_json: every (image, caption) pair of a dataset_coco.json or ALBEF [{image, caption: [..]}] file at `urls`",
    )
    urls: str | list[str] | None = Field(
        default=None,
        description="webdataset shard pattern(s), e.g. /data/cc3m/{00000..00331}.tar, CSV file(s) or retrieval JSON file(s); a list mixes sources",
    )
    weights: list[PositiveFloat] | None = Field(
        default=None, description="sampling weight of each `urls` entry; default: proportional to source sizes"
    )
    csv_separator: str = Field(default="\t", description="open_clip's --csv-separator")
    csv_img_key: str = Field(default="filepath", description="CSV column of image paths (relative to the CSV file unless absolute)")
    csv_caption_key: str = Field(default="title", description="CSV column of captions")
    image_root: str | None = Field(
        default=None, description="karpathy / retrieval_json: what the JSON's image paths are relative to; default: the JSON's directory"
    )
    splits: list[str] = Field(
        default_factory=lambda: ["train", "restval"], min_length=1, description="karpathy: the splits trained on"
    )
    shuffle_buffer: PositiveInt = Field(default=10000, description="samples in one shuffle window of a real source")
    workers: Annotated[PositiveInt, Operational("threads only; batches are a pure function of (seed, step)")] = Field(
        default=4, description="decoding threads of a real source")
    text_only: UnpairedSourceConfig | None = Field(
        default=None, description="caption files trained with MLM only, beside the paired data (needs the mlm term)"
    )
    image_only: UnpairedSourceConfig | None = Field(
        default=None, description="image shards or folders trained with MIM only, beside the paired data (needs the mim term)"
    )
    eval_sources: dict[str, EvalSourceConfig] = Field(
        default_factory=dict, description="eval set name -> files; `eval.sets` may name these besides the built-in sets"
    )
    cache_dir: Annotated[str, Operational("where derived files are kept; their content is keyed by what they hold")] = Field(
        default="data_cache", description="where generated shards, shard indexes and the tokenizer are written")
    train_size: PositiveInt = 20000
    eval_images: PositiveInt = 1000
    cls_images_per_class: PositiveInt = 10
    max_objects: PositiveInt = 2
    generator_seed: int = 0
    tokenizer: str | None = Field(default=None, description="a local Hugging Face tokenizer directory; default: train WordPiece")
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
    precision: Literal["auto", "fp32", "bf16"] = Field(default="auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    device: Annotated[str, Operational("where it runs; precision is its own (identity) field")] = Field(
        default="auto", description="auto, cpu, cuda, cuda:N")
    checkpoint_every: Annotated[PositiveInt, Operational("a resumed run continues exactly (RNG and data position restored)")] = 200
    log_every: Annotated[PositiveInt, Operational("cadence of training-loss logging, not of evaluation")] = 10
    threads: Annotated[
        int | None, Operational("CPU intra-op threads: float reduction order changes, as on another GPU; the recipe does not")
    ] = Field(default=None, ge=1, description="torch intra-op threads on CPU; default: torch's choice")
    init_from: str | None = Field(
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

    model: ModelConfig = Field(default_factory=ModelConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
