"""Lazily computed forward passes shared by the terms of one training step.

Each term asks for the views it needs; a pass that two terms share (the masked
image pass for MIM and ITC, the masked joint pass for MMM and CMC) runs once.

Unpaired rows (`StepInputs.extra_*`: captions without images, images without captions) join
only the masked single-modality passes, after the paired rows: MLM and MIM train on them, while
every contrastive term (`embed` keeps the paired rows) and MMM see the paired rows alone. Their
corruption is drawn from a generator of their own, so the paired rows' masks do not depend on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from oner_lab.host_copy import to_device
from oner_lab.model import OneTower, TowerOutput, patchify
from oner_lab.objectives.infonce import info_nce, mix
from oner_lab.objectives.masking import IGNORE, mask_patches, mask_text, masked_count, take_masked
from oner_lab.seeds import StepStream

HEAD_OF_VIEW = {"I": "image", "T": "text", "I|T": "image", "T|I": "text", "I,T": "joint"}


@dataclass(frozen=True)
class ViewSettings:
    """What the terms need to know beyond the batch; plain values, no spec objects."""

    masked_views: frozenset[str]  # views whose masked pass an active term trains (`Term.masked_view`)
    contrast_masked_views: bool
    targets: Literal["momentum", "online"]
    mlm_prob: float
    mim_ratio: float
    mask_id: int
    vocab_size: int
    special_ids: torch.Tensor


@dataclass
class StepInputs:
    """One step's batch, as the data module hands it over; `extra_*` are optional unpaired rows."""

    images: torch.Tensor
    images_target: torch.Tensor
    text_ids: torch.Tensor
    text_mask: torch.Tensor
    extra_text_ids: torch.Tensor | None = None  # [E, L] captions without images: the MLM pass only
    extra_text_mask: torch.Tensor | None = None
    extra_images: torch.Tensor | None = None  # [E, 3, H, W] images without captions: the MIM pass only


class Views:
    """The forward passes of one step, each computed at most once."""

    def __init__(
        self,
        online: OneTower,
        target: OneTower,
        inputs: StepInputs,
        settings: ViewSettings,
        logit_scale: torch.Tensor,
        generator: torch.Generator,
    ) -> None:
        self.online = online
        self.target_encoder = target if settings.targets == "momentum" else online
        self.inputs = inputs
        self.settings = settings
        self.logit_scale = logit_scale
        self.generator = generator
        self._outputs: dict[tuple[str, bool], TowerOutput] = {}
        self._targets: dict[str, torch.Tensor] = {}
        self._text_corruption: tuple[torch.Tensor, torch.Tensor] | None = None
        self._patch_mask: torch.Tensor | None = None
        self._all_masked_text: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._all_masked_images: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- corruption, drawn once per step -------------------------------------------------
    def text_corruption(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(corrupted ids, labels) for MLM and MMM."""
        if self._text_corruption is None:
            s = self.settings
            self._text_corruption = mask_text(
                self.inputs.text_ids, s.special_ids, s.mask_id, s.vocab_size, s.mlm_prob, self.generator
            )
        return self._text_corruption

    def patch_mask(self) -> torch.Tensor:
        """[B, Np] masked patches for MIM and MMM."""
        if self._patch_mask is None:
            b = self.inputs.images.shape[0]
            mask = mask_patches(b, self.online.cfg.num_patches, self.settings.mim_ratio, self.generator)
            self._patch_mask = to_device(mask, self.inputs.images.device)
        return self._patch_mask

    def extra_generator(self, stream: int) -> torch.Generator:
        """Randomness for unpaired rows (`seeds.StepStream`), seeded
        from the step's generator without drawing from it, so no mask depends on which other rows the step holds."""
        state = np.random.SeedSequence([self.generator.initial_seed(), stream]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state))

    def masked_text(self, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(corrupted ids, text mask, labels) of the first `rows` rows of [paired; unpaired captions]."""
        if self._all_masked_text is None:
            ids, labels = self.text_corruption()
            text_mask, extra_ids = self.inputs.text_mask, self.inputs.extra_text_ids
            if extra_ids is not None:  # joined once a step: the masked pass and the MLM loss slice the same rows
                s = self.settings
                extra = mask_text(
                    extra_ids,
                    s.special_ids,
                    s.mask_id,
                    s.vocab_size,
                    s.mlm_prob,
                    self.extra_generator(int(StepStream.UNPAIRED_TEXT_MASK)),
                )
                ids, labels = torch.cat([ids, extra[0]]), torch.cat([labels, extra[1]])
                text_mask = torch.cat([text_mask, self.inputs.extra_text_mask])
            self._all_masked_text = (ids, text_mask, labels)
        ids, text_mask, labels = self._all_masked_text
        return ids[:rows], text_mask[:rows], labels[:rows]

    def masked_images(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, patch mask) of the first `rows` rows of [paired; unpaired images]."""
        if self._all_masked_images is None:
            images, mask = self.inputs.images, self.patch_mask()
            extra = self.inputs.extra_images
            if extra is not None:  # joined once a step: the masked pass and the MIM loss slice the same rows
                extra_mask = mask_patches(
                    extra.shape[0],
                    self.online.cfg.num_patches,
                    self.settings.mim_ratio,
                    self.extra_generator(int(StepStream.UNPAIRED_IMAGE_MASK)),
                )
                images, mask = torch.cat([images, extra]), torch.cat([mask, to_device(extra_mask, extra.device)])
            self._all_masked_images = (images, mask)
        images, mask = self._all_masked_images
        return images[:rows], mask[:rows]

    def masked_rows(self, view: str) -> int:
        """Rows of a masked pass: the paired batch, plus the unpaired rows in the single-modality views."""
        x = self.inputs
        if view == "T" and x.extra_text_ids is not None:
            return x.text_ids.shape[0] + x.extra_text_ids.shape[0]
        if view == "I" and x.extra_images is not None:
            return x.images.shape[0] + x.extra_images.shape[0]
        return x.text_ids.shape[0]

    # --- forward passes -----------------------------------------------------------------
    def output(self, view: str, masked: bool = False) -> TowerOutput:
        """The online encoder's pass over `view`, masked (MIM/MLM corruption) or clean."""
        key = (view, masked)
        if key not in self._outputs:
            x = self.inputs
            images = x.images if "I" in view else None
            text_ids = x.text_ids if "T" in view else None
            text_mask = x.text_mask if "T" in view else None
            patch_mask = None
            reads: torch.Tensor | str = "cls"  # a clean pass: `embed` reads its [CLS] alone
            if masked:
                rows = self.masked_rows(view)
                read = []  # MIM's masked patches and MLM's chosen tokens, the positions the losses read
                if images is not None:
                    images, patch_mask = self.masked_images(rows)
                    read.append(patch_mask)
                if text_ids is not None:
                    text_ids, text_mask, labels = self.masked_text(rows)
                    read.append(labels != IGNORE)
                reads = torch.cat(read, dim=1)
            self._outputs[key] = self.online(
                view,
                images=images,
                text_ids=text_ids,
                text_mask=text_mask,
                patch_mask=patch_mask,
                reads=reads,
            )
        return self._outputs[key]

    def embed(self, view: str, masked: bool = False) -> torch.Tensor:
        """F(view) from the online encoder: pooled [CLS], projected, L2-normalised; paired rows only."""
        paired = self.inputs.text_ids.shape[0]
        return self.online.project(self.output(view, masked).cls[:paired], HEAD_OF_VIEW[view])

    def contrast(self, view: str) -> torch.Tensor:
        """F(view) for a contrastive left side. The joint view takes the global token of the
        MMM pass when MMM runs (docs/paper.md [reading]); the single-modality views take the MIM/MLM
        passes' only if `contrast_masked_views` is set, and clean passes otherwise."""
        wanted = view == "I,T" or self.settings.contrast_masked_views
        return self.embed(view, masked=wanted and view in self.settings.masked_views)

    def target(self, view: str) -> torch.Tensor:
        """F(view) on the second image view from the target encoder (momentum: no gradient)."""
        if view not in self._targets:
            x = self.inputs
            images = x.images_target if "I" in view else None
            text_ids = x.text_ids if "T" in view else None
            with torch.set_grad_enabled(self.target_encoder is self.online and torch.is_grad_enabled()):
                out = self.target_encoder(
                    view,
                    images=images,
                    text_ids=text_ids,
                    text_mask=x.text_mask if text_ids is not None else None,
                    reads="cls",
                )
                self._targets[view] = self.target_encoder.project(out.cls, HEAD_OF_VIEW[view])
        return self._targets[view]

    def target_mix(self) -> torch.Tensor:
        """(F(I) + F(T)) / 2 from the target encoder: the right side of XMC, CIC and CMC."""
        return mix(self.target("I"), self.target("T"))

    # --- losses the terms share ---------------------------------------------------------
    def info_nce(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return info_nce(left, right, self.logit_scale)

    def mlm_loss(self, out: TowerOutput) -> torch.Tensor:
        """Cross-entropy of the tied MLM head on the corrupted text positions (of every row `out` holds)."""
        labels = self.masked_text(out.text_tokens.shape[0])[2].reshape(-1)
        # one host sync: how many tokens were chosen is random, and the head's input size depends on it
        chosen = (labels != IGNORE).nonzero().squeeze(1)
        tokens = out.text_tokens.reshape(-1, out.text_tokens.shape[-1])
        logits = self.online.mlm_head(tokens[chosen])
        return F.cross_entropy(logits.float(), labels[chosen])

    def mim_loss(self, out: TowerOutput) -> torch.Tensor:
        """SimMIM: L1 between predicted and true (normalised) pixels of the masked patches (of every row `out` holds)."""
        images, mask = self.masked_images(out.image_tokens.shape[0])
        count = masked_count(self.online.cfg.num_patches, self.settings.mim_ratio)  # the same in every row
        pred = self.online.mim_head(take_masked(out.image_tokens, mask, count))
        target = take_masked(patchify(images, self.online.cfg.patch_size), mask, count)
        return F.l1_loss(pred.float(), target.float())
