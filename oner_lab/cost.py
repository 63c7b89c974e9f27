"""What one run costs: parameter count and training FLOPs per optimisation step.

Counted on the real model and the real objective terms, on meta tensors: nothing is allocated or
computed, so a ViT-B/16 at batch 4096 costs no memory to count, only time: 5-15 s per config on a
2-core CPU, which is why a count is kept on disk for the next process (cost_cache.py). The training
loop logs it as params (`cost.*`, docs/tracking.md) and a cost estimate can reuse `count` before any run.

FLOPs are what `torch.utils.flop_counter.FlopCounterMode` counts (matmuls, convolutions, attention;
a multiply-add is 2 FLOPs) for the forward and backward passes of every active term on the global
batch (all ranks together, unpaired rows included), the momentum encoder's forward passes too. The
optimiser step, the EMA update and element-wise ops are left out (a few percent at most).

Memory: the peak of the bytes held by live tensors during the forward and backward passes (every
tensor's storage counted once, freed when the last reference goes), at the global batch in float32
with the run's activation checkpointing, every text position included as a GPU runs them; a real CPU
step's resident memory grows by that much within a few percent when it runs them too
(tests/test_cost_estimate.py; a CPU pass otherwise skips the padding, model/packing.py). What a GPU rank needs is built from it in
launch/estimate.py.

Masked positions are data-dependent; on meta tensors they are counted at their configured share:
`objective.mim_ratio` of the patches (exact: every image masks that many), `objective.mlm_prob` of the
text positions (an upper estimate: real captions are shorter than `model.max_text_len` and special
tokens are never masked).

Every text position is counted, as a GPU runs them. A CPU pass skips the padding (model/packing.py),
so a CPU step does less than its count; the CPU entry of launch/devices.py is measured against the
count on the built-in data, whose captions fill 60% of the positions.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass, replace
from dataclasses import fields as fields_of
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from oner_lab import cost_cache
from oner_lab.model import OneTower, TowerConfig, momentum_copy, tower_config
from oner_lab.objectives import TERMS, StepInputs, resolve_terms
from oner_lab.spec.config import RunConfig

PARAM_TOTAL = "cost.params_total"
PARAM_TRAINABLE = "cost.params_trainable"
PARAM_FLOPS = "cost.train_flops_per_step"

_aten = torch.ops.aten


@dataclass(frozen=True)
class Cost:
    """Parameter counts of the trained tower (the momentum copy is not counted twice), FLOPs per step and
    the live-tensor peak of one step's passes."""

    params_total: int
    params_trainable: int
    flops_per_step: int
    momentum_params: int = 0
    """Parameters of the momentum copy (the EMA target), kept beside the model."""
    activation_bytes: int = 0
    """Peak bytes of the tensors alive during forward and backward (activations, gradients, the
    losses' intermediates) at the global batch, float32."""

    def as_params(self) -> dict[str, str]:
        """The MLflow params the training loop logs."""
        return {
            PARAM_TOTAL: str(self.params_total),
            PARAM_TRAINABLE: str(self.params_trainable),
            PARAM_FLOPS: str(self.flops_per_step),
        }


class _MaskedShare(TorchDispatchMode):
    """Makes the objectives' two data-dependent ops answerable on meta tensors.

    `nonzero` of a boolean mask (what `tokens[mask]` calls) returns the mask's known number of True
    entries: exact for a mask copied from real values (the patch mask is drawn on the CPU), else
    `mim_ratio` of a row of patches or `mlm_prob` of text positions. `.item()` of a meta tensor
    (mask_text's "at least one token" guard) answers True.
    """

    def __init__(self, num_patches: int, mim_ratio: float, mlm_prob: float) -> None:
        super().__init__()
        self.num_patches = num_patches
        self.patches_per_row = max(1, round(mim_ratio * num_patches))
        self.mlm_prob = mlm_prob
        self.known: weakref.WeakKeyDictionary[torch.Tensor, int] = weakref.WeakKeyDictionary()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        first = args[0] if args else None
        if func is _aten._local_scalar_dense.default and isinstance(first, torch.Tensor) and first.is_meta:
            return True if first.dtype == torch.bool else 1
        if func is _aten.nonzero.default and isinstance(first, torch.Tensor) and first.is_meta:
            return torch.empty(self._true_count(first), first.dim(), dtype=torch.long, device="meta")
        if func is _aten.index.Tensor and first.is_meta and any(_is_meta_mask(index) for index in args[1]):
            indices: list[torch.Tensor | None] = []
            for index in args[1]:
                if _is_meta_mask(index):  # a mask over k dims is k long index vectors of its True count
                    count = self._true_count(index)
                    indices += [torch.empty(count, dtype=torch.long, device="meta") for _ in range(index.dim())]
                else:
                    indices.append(index)
            return func(first, indices)
        out = func(*args, **kwargs)
        if (
            func is _aten._to_copy.default
            and isinstance(first, torch.Tensor)
            and not first.is_meta
            and first.dtype == torch.bool
            and isinstance(out, torch.Tensor)
            and out.is_meta
        ):
            self.known[out] = int(first.sum())
        return out

    def _true_count(self, mask: torch.Tensor) -> int:
        count = self.known.get(mask)
        if count is not None:
            return count
        if mask.shape[-1] == self.num_patches:
            return mask.numel() // self.num_patches * self.patches_per_row
        return round(self.mlm_prob * mask.numel())


class _LiveBytes(TorchDispatchMode):
    """The peak of bytes held by the storages that ops create, each storage counted once until freed."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.held: set[int] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self.held:
                    self.held.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        return out

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.held.discard(key)


def _is_meta_mask(index: object) -> bool:
    return isinstance(index, torch.Tensor) and index.is_meta and index.dtype == torch.bool


def _tower(config: RunConfig, vocab_size: int) -> TowerConfig:
    overrides = config.model.model_dump(exclude={"preset"})
    return replace(tower_config(config.model.preset, **overrides), vocab_size=vocab_size)


_COUNTED: dict[tuple[str, int], Cost] = {}
"""Counts of this process by (config without its seed, vocabulary): the seeds of a grid cost the same.
Between processes they are kept on disk (cost_cache.py), keyed by the code as well."""


def count(config: RunConfig, vocab_size: int | None = None) -> Cost:
    """Parameters and training FLOPs per step of `config`.

    `vocab_size`: the tokenizer's (the training loop passes the real one); default `data.vocab_size`,
    the size a trained WordPiece aims at (a small corpus may end with fewer words).
    """
    vocab = vocab_size or config.data.vocab_size
    key = (config.model_copy(update={"train": config.train.model_copy(update={"seed": 0})}).model_dump_json(), vocab)
    if key not in _COUNTED:
        obj = config.objective
        weights = resolve_terms(obj.variant, obj.terms, obj.masked_terms)
        term_modules = [TERMS[name].loss.__module__ for name in weights if name in TERMS]
        name = cost_cache.key(f"{key[0]}\0{sorted(weights.items())}", vocab, term_modules)
        fields = [field.name for field in fields_of(Cost)]
        _COUNTED[key] = Cost(**cost_cache.kept(name, fields, lambda: asdict(_count(config, vocab))))
    return _COUNTED[key]


def _count(config: RunConfig, vocab_size: int) -> Cost:
    from oner_lab.train import build_objective  # the trainer's own wiring (train imports this module)

    tower = _tower(config, vocab_size)
    obj = config.objective
    weights = resolve_terms(obj.variant, obj.terms, obj.masked_terms)
    special = torch.arange(4, dtype=torch.int64)  # [PAD] [CLS] [SEP] [MASK]-like ids; no value is read on meta
    batch, length, size = config.train.batch_size, tower.max_text_len, tower.image_size
    with torch.device("meta"):
        model = OneTower(tower)
        model.activation_checkpointing = config.train.activation_checkpointing
        target = momentum_copy(model)
        objective = build_objective(obj, weights, 3, tower.vocab_size, special)
        images = torch.empty(batch, 3, size, size)
        ids = torch.zeros(batch, length, dtype=torch.long)
        mask = torch.ones(batch, length, dtype=torch.long)
        text_only, image_only = config.data.text_only, config.data.image_only
        extra_ids = torch.zeros(text_only.batch_size, length, dtype=torch.long) if text_only else None
        extra_mask = torch.ones(text_only.batch_size, length, dtype=torch.long) if text_only else None
        extra_images = torch.empty(image_only.batch_size, 3, size, size) if image_only else None
    inputs = StepInputs(images, images, ids, mask, extra_ids, extra_mask, extra_images)
    trained = [p for module in (model, objective) for p in module.parameters()]
    live = _LiveBytes()
    with _MaskedShare(tower.num_patches, obj.mim_ratio, obj.mlm_prob), FlopCounterMode(display=False) as counter:
        with live:
            total, _ = objective(model, target, inputs, torch.Generator().manual_seed(0))
            total.backward()
            del total
    return Cost(
        params_total=sum(p.numel() for p in trained),
        params_trainable=sum(p.numel() for p in trained if p.requires_grad),
        flops_per_step=int(counter.get_total_flops()),
        momentum_params=sum(p.numel() for p in target.parameters()),
        activation_bytes=live.peak,
    )


__all__ = ["PARAM_FLOPS", "PARAM_TOTAL", "PARAM_TRAINABLE", "Cost", "count"]
