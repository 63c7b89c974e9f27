"""Objective terms against hand computations; gradients; variants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from oner_lab.model import OneTower, momentum_copy, patchify, tower_config
from oner_lab.objectives import (
    TERMS,
    VARIANTS,
    Objective,
    StepInputs,
    TermOptions,
    Views,
    ViewSettings,
    info_nce,
    masked_views,
    mix,
    resolve_terms,
)
from oner_lab.objectives.masking import IGNORE, mask_patches, mask_text

VOCAB = 60
SPECIAL = torch.tensor([0, 1, 2, 3, 4])
MASK_ID = 4


def settings(terms, contrast_masked_views=True, targets="momentum") -> ViewSettings:
    return ViewSettings(masked_views(terms), contrast_masked_views, targets, 0.15, 0.6, MASK_ID, VOCAB, SPECIAL)


def make(head: str = "shared", batch: int = 6):
    torch.manual_seed(0)
    model = OneTower(
        tower_config("tiny", width=32, depth=2, num_heads=2, vocab_size=VOCAB, max_text_len=8, head=head, image_size=32)
    )
    target = momentum_copy(model)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, 32, 32, generator=g)
    ids = torch.randint(5, VOCAB, (batch, 8), generator=g)
    ids[:, 7] = 2  # [SEP]
    mask = torch.ones(batch, 8, dtype=torch.bool)
    return model, target, StepInputs(images, images.roll(1, dims=-1), ids, mask)


def hand_info_nce(left: torch.Tensor, right: torch.Tensor, temperature: float) -> float:
    """Loop form of symmetric InfoNCE: -log softmax of the matching pair, both directions."""
    n = left.shape[0]
    total = 0.0
    for i in range(n):
        row = [float(left[i] @ right[j]) / temperature for j in range(n)]
        col = [float(right[i] @ left[j]) / temperature for j in range(n)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        total += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    return total / (2 * n)


def test_info_nce_matches_the_loop_form() -> None:
    g = torch.Generator().manual_seed(0)
    left = F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    right = F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    value = info_nce(left, right, torch.tensor(math.log(1 / 0.07)))
    assert value.item() == pytest.approx(hand_info_nce(left, right, 0.07), rel=1e-5)


def test_mix_is_the_renormalised_mean() -> None:
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(mix(a, b), torch.tensor([[1.0, 1.0]]) / math.sqrt(2))


@pytest.mark.parametrize(
    ("term", "left", "right"),
    [
        ("itc", lambda v: v.embed("I", masked=True), lambda v: v.embed("T", masked=True)),
        ("xmc", lambda v: mix(v.embed("I", True), v.embed("T", True)), lambda v: mix(v.target("I"), v.target("T"))),
        ("cic", lambda v: mix(v.embed("I|T"), v.embed("T|I")), lambda v: mix(v.target("I"), v.target("T"))),
        ("cmc", lambda v: v.embed("I,T", masked=True), lambda v: mix(v.target("I"), v.target("T"))),
    ],
)
def test_contrastive_terms_are_infonce_of_the_paper_sides(term, left, right) -> None:
    """Each term equals hand InfoNCE between the sides of the poster's table (masked passes shared)."""
    model, target, inputs = make()
    active = {term, "mlm", "mim", "mmm"}
    scale = torch.tensor(math.log(1 / 0.07))
    views = Views(model, target, inputs, settings(active), scale, torch.Generator().manual_seed(0))
    value = TERMS[term].loss(views, TermOptions())[term]
    expected = hand_info_nce(left(views).detach(), right(views).detach(), 0.07)
    assert value.item() == pytest.approx(expected, rel=1e-4)


def test_contrast_uses_clean_passes_when_configured_or_when_no_masked_term_runs() -> None:
    model, target, inputs = make()
    scale = torch.tensor(math.log(1 / 0.07))
    for cfg in (settings({"itc", "mlm", "mim"}, contrast_masked_views=False), settings({"itc"})):
        views = Views(model, target, inputs, cfg, scale, torch.Generator().manual_seed(0))
        torch.testing.assert_close(views.contrast("I"), model.encode_image(inputs.images))


def test_cmc_left_side_is_the_mmm_pass_whatever_contrast_masked_views_says() -> None:
    model, target, inputs = make()
    scale = torch.tensor(math.log(1 / 0.07))
    views = Views(
        model, target, inputs, settings({"cmc", "mmm"}, contrast_masked_views=False), scale, torch.Generator()
    )
    torch.testing.assert_close(views.contrast("I,T"), views.embed("I,T", masked=True))
    clean = Views(model, target, inputs, settings({"cmc"}, contrast_masked_views=False), scale, torch.Generator())
    torch.testing.assert_close(clean.contrast("I,T"), clean.embed("I,T", masked=False))


def test_momentum_side_receives_no_gradient() -> None:
    model, target, inputs = make()
    objective = Objective({"xmc": 1.0, "cic": 1.0, "cmc": 1.0}, settings({"xmc", "cic", "cmc"}))
    total, _ = objective(model, target, inputs, torch.Generator().manual_seed(0))
    total.backward()
    assert all(p.grad is None for p in target.parameters())
    assert model.blocks[0].attn.qkv.weight.grad is not None
    assert objective.logit_scale.grad is not None


def test_online_targets_receive_gradient() -> None:
    model, target, inputs = make()
    views = Views(model, target, inputs, settings({"xmc"}, targets="online"), torch.tensor(2.0), torch.Generator())
    assert views.target("I").requires_grad


def test_mlm_is_cross_entropy_on_the_masked_positions_only() -> None:
    model, target, inputs = make()
    views = Views(model, target, inputs, settings({"mlm"}), torch.tensor(2.0), torch.Generator().manual_seed(3))
    value = TERMS["mlm"].loss(views, TermOptions())["mlm"]
    corrupted, labels = views.text_corruption()
    out = model("T", text_ids=corrupted, text_mask=inputs.text_mask)
    logits = model.mlm_head(out.text_tokens)
    chosen = labels != IGNORE
    expected = F.cross_entropy(logits[chosen], labels[chosen])
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_mim_is_l1_on_masked_patch_pixels_only() -> None:
    model, target, inputs = make()
    views = Views(model, target, inputs, settings({"mim"}), torch.tensor(2.0), torch.Generator().manual_seed(3))
    value = TERMS["mim"].loss(views, TermOptions())["mim"]
    mask = views.patch_mask()
    out = model("I", images=inputs.images, patch_mask=mask)
    pred = model.mim_head(out.image_tokens)
    target_pixels = patchify(inputs.images, 8)
    expected = (pred - target_pixels).abs()[mask].mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_mmm_is_mlm_plus_mim_on_the_joint_masked_pass() -> None:
    model, target, inputs = make()
    views = Views(model, target, inputs, settings({"mmm"}), torch.tensor(2.0), torch.Generator().manual_seed(3))
    value = TERMS["mmm"].loss(views, TermOptions())["mmm"]
    out = views.output("I,T", masked=True)
    assert value.item() == pytest.approx((views.mlm_loss(out) + views.mim_loss(out)).item(), rel=1e-6)


def test_text_masking_never_touches_special_tokens_and_always_masks_something() -> None:
    ids = torch.tensor([[0, 1, 2, 3, 4] + [10] * 40])
    corrupted, labels = mask_text(ids, SPECIAL, MASK_ID, VOCAB, 0.15, torch.Generator().manual_seed(0))
    torch.testing.assert_close(corrupted[0, :5], ids[0, :5])
    assert (labels[0, :5] == IGNORE).all()
    chosen = labels != IGNORE
    torch.testing.assert_close(labels[chosen], ids[chosen])
    rare, labels = mask_text(torch.tensor([[2, 9, 2]]), SPECIAL, MASK_ID, VOCAB, 1e-9, torch.Generator().manual_seed(0))
    assert (labels != IGNORE).sum() == 1 and labels[0, 1] == 9


def test_patch_masks_have_the_exact_ratio() -> None:
    mask = mask_patches(7, 16, 0.6, torch.Generator().manual_seed(0))
    assert mask.sum(dim=1).tolist() == [10] * 7
    assert not torch.equal(mask[0], mask[1])


def test_patchify_matches_a_loop() -> None:
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).reshape(2, 3, 4, 4)
    patches = patchify(images, 2)
    for b in range(2):
        for row in range(2):
            for col in range(2):
                block = images[b, :, row * 2 : row * 2 + 2, col * 2 : col * 2 + 2]
                torch.testing.assert_close(patches[b, row * 2 + col], block.permute(1, 2, 0).reshape(-1))


def test_total_is_the_weighted_sum_and_temperature_is_clamped() -> None:
    model, target, inputs = make()
    objective = Objective({"itc": 0.5, "mlm": 2.0}, settings({"itc", "mlm"}), temperature_min=0.05)
    with torch.no_grad():
        objective.logit_scale.fill_(10.0)
    total, values = objective(model, target, inputs, torch.Generator().manual_seed(0))
    assert total.item() == pytest.approx(0.5 * values["itc"].item() + 2.0 * values["mlm"].item(), rel=1e-6)
    assert objective.logit_scale.item() == pytest.approx(math.log(20.0))
    with pytest.raises(KeyError, match="unknown objective terms"):
        Objective({"itcc": 1.0}, settings({"itc"}))


def test_variants_are_the_paper_term_sets() -> None:
    assert resolve_terms("itc_two_heads", {}, True) == {"itc": 1.0, "mlm": 1.0, "mim": 1.0}
    assert VARIANTS["itc_two_heads"].head == "per_modality"
    assert set(resolve_terms("xmc", {}, True)) == {"itc", "xmc", "mlm", "mim"}
    assert set(resolve_terms("xmc_cic", {}, True)) == {"itc", "xmc", "cic", "mlm", "mim"}
    assert set(resolve_terms("oner", {}, True)) == {"itc", "cmc", "mlm", "mim", "mmm"}
    assert set(resolve_terms("oner_cumulative", {}, False)) == {"itc", "xmc", "cic", "cmc"}
    assert resolve_terms("oner", {"mmm": 0.0, "cmc": 0.5}, True) == {"itc": 1.0, "cmc": 0.5, "mlm": 1.0, "mim": 1.0}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("contrast_masked", [False, True])
def test_a_cpu_step_reading_only_what_its_terms_read_gives_the_full_steps_losses_and_gradients(
    variant: str, contrast_masked: bool
) -> None:
    """model/packing.py through the terms: each pass runs its last block on the positions its terms read
    (clean and momentum passes their [CLS], MIM its masked patches, MLM its chosen tokens). The step's
    named losses and every gradient equal those of a step that runs every position, in float64, with
    padded captions and unpaired rows in the masked passes."""
    weights = resolve_terms(variant, {}, masked_terms=True)
    model, target, inputs = make(head=VARIANTS[variant].head)
    model, target = model.double(), target.double()
    lengths = torch.tensor([3, 8, 5, 6, 2, 7])
    inputs.text_mask = torch.arange(8)[None] < lengths[:, None]
    inputs.text_ids[~inputs.text_mask] = 0  # [PAD], as the tokenizer pads: never chosen for MLM
    inputs.images, inputs.images_target = inputs.images.double(), inputs.images_target.double()
    g = torch.Generator().manual_seed(9)
    inputs.extra_text_ids = torch.randint(5, VOCAB, (3, 8), generator=g)
    inputs.extra_text_mask = torch.arange(8)[None] < torch.tensor([4, 8, 6])[:, None]
    inputs.extra_text_ids[~inputs.extra_text_mask] = 0
    inputs.extra_images = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
    results = []
    for pack_tokens in (True, False):
        model.pack_tokens = target.pack_tokens = pack_tokens
        objective = Objective(weights, settings(set(weights), contrast_masked_views=contrast_masked)).double()
        model.zero_grad()
        total, values = objective(model, target, inputs, torch.Generator().manual_seed(4))
        total.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((total.detach(), {k: v.detach() for k, v in values.items()}, grads, objective.logit_scale.grad))
    (total, values, grads, scale_grad), (full_total, full_values, full_grads, full_scale_grad) = results
    close = {"rtol": 1e-9, "atol": 1e-11}
    torch.testing.assert_close(total, full_total, **close)
    assert values.keys() == full_values.keys() == set(weights)
    for name, value in full_values.items():
        torch.testing.assert_close(values[name], value, **close, msg=name)
    assert grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(grads[name], grad, **close, msg=name)
    torch.testing.assert_close(scale_grad, full_scale_grad, **close)
