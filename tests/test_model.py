"""The tower: attention masks of every view, heads, momentum copy."""

from __future__ import annotations

import math

import pytest
import torch

from oner_lab.model import (
    OneTower,
    attention_mask,
    ema_update,
    momentum_at,
    momentum_copy,
    tower_config,
)

VOCAB = 50


@pytest.fixture()
def tower() -> OneTower:
    torch.manual_seed(0)
    model = OneTower(
        tower_config("tiny", width=32, depth=2, num_heads=2, vocab_size=VOCAB, max_text_len=8, image_size=32)
    )
    return model.eval()


def inputs(seed: int, batch: int = 3):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 32, 32, generator=g)
    ids = torch.randint(5, VOCAB, (batch, 8), generator=g)
    mask = torch.ones(batch, 8, dtype=torch.bool)
    mask[:, 6:] = False
    return images, ids, mask


def run_view(model: OneTower, view: str, images, ids, mask):
    return model(
        view,
        images=images if "I" in view else None,
        text_ids=ids if "T" in view else None,
        text_mask=mask if "T" in view else None,
    )


def test_context_tokens_ignore_the_other_modality_queries_do_not(tower: OneTower) -> None:
    images, ids, mask = inputs(0)
    other_images, other_ids, _ = inputs(1)
    # I|T: text is context. Changing the image leaves text outputs alone, changes CLS and image outputs.
    a = run_view(tower, "I|T", images, ids, mask)
    b = run_view(tower, "I|T", other_images, ids, mask)
    torch.testing.assert_close(a.text_tokens, b.text_tokens)
    assert not torch.allclose(a.cls, b.cls)
    c = run_view(tower, "I|T", images, other_ids, mask)
    assert not torch.allclose(a.image_tokens, c.image_tokens)  # the query reads its context
    # T|I: image is context.
    a = run_view(tower, "T|I", images, ids, mask)
    b = run_view(tower, "T|I", images, other_ids, mask)
    torch.testing.assert_close(a.image_tokens, b.image_tokens)
    assert not torch.allclose(a.cls, b.cls)
    c = run_view(tower, "T|I", other_images, ids, mask)
    assert not torch.allclose(a.text_tokens[:, :6], c.text_tokens[:, :6])
    # I,T: full attention, both directions.
    a = run_view(tower, "I,T", images, ids, mask)
    b = run_view(tower, "I,T", other_images, ids, mask)
    c = run_view(tower, "I,T", images, other_ids, mask)
    assert not torch.allclose(a.text_tokens[:, :6], b.text_tokens[:, :6])
    assert not torch.allclose(a.image_tokens, c.image_tokens)


def test_mask_rows_of_each_view() -> None:
    """Rows are queries: context rows see only context keys; padding is never a key (but itself)."""
    text_mask = torch.tensor([[True, True, False]])
    n_img = 2  # sequence: [CLS, i1, i2, t1, t2, pad]
    it = attention_mask("I|T", n_img, text_mask)[0, 0]
    assert it[0].tolist() == [True, True, True, True, True, False]  # CLS reads image and text
    assert it[3].tolist() == [False, False, False, True, True, False]  # text context reads text only
    ti = attention_mask("T|I", n_img, text_mask)[0, 0]
    assert ti[1].tolist() == [False, True, True, False, False, False]  # image context reads image only
    assert ti[3].tolist() == [True, True, True, True, True, False]
    full = attention_mask("I,T", n_img, text_mask)[0, 0]
    assert full[1].tolist() == [True, True, True, True, True, False]
    assert full[5].tolist() == [True, True, True, True, True, True]  # the pad row keeps itself


def test_masks_are_built_without_reading_the_device_back() -> None:
    """No data-dependent op (`nonzero`, which boolean indexing runs) while a mask is built: on a GPU each
    one waits for the device, in every joint pass of every step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    text_mask = torch.tensor([[True, True, False], [True, False, False]])
    for view in ("T", "I|T", "T|I", "I,T"):
        with Ops() as ops:
            attention_mask(view, 2, text_mask)
        assert not ops.seen & {"aten.nonzero", "aten.index", "aten.masked_select", "aten._local_scalar_dense"}, (
            view,
            sorted(ops.seen),
        )


def test_padding_never_changes_real_outputs(tower: OneTower) -> None:
    images, ids, mask = inputs(0)
    other = ids.clone()
    other[:, 6:] = 7  # different ids in padded positions
    for view in ("T", "I|T", "T|I", "I,T"):
        a = run_view(tower, view, images, ids, mask)
        b = run_view(tower, view, images, other, mask)
        torch.testing.assert_close(a.cls, b.cls)
        torch.testing.assert_close(a.text_tokens[:, :6], b.text_tokens[:, :6])


def test_image_only_view_has_no_mask_so_sdpa_can_use_flash() -> None:
    assert attention_mask("I", 16, None) is None
    with pytest.raises(ValueError, match="unknown view"):
        attention_mask("I|X", 16, None)


def test_patch_mask_replaces_only_masked_patches(tower: OneTower) -> None:
    images, _, _ = inputs(0)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[:, :5] = True
    plain = tower.embed_image(images)
    masked = tower.embed_image(images, mask)
    torch.testing.assert_close(plain[:, 5:], masked[:, 5:])
    torch.testing.assert_close(masked[:, :5] - tower.image_pos[:, :5], tower.image_mask_token.expand(3, 5, -1))


def test_shared_head_projects_every_modality_the_same_way() -> None:
    torch.manual_seed(0)
    shared = OneTower(tower_config("tiny", width=32, depth=1, num_heads=2, vocab_size=VOCAB))
    pooled = torch.randn(4, 32)
    torch.testing.assert_close(shared.project(pooled, "image"), shared.project(pooled, "text"))
    torch.testing.assert_close(shared.project(pooled, "joint").norm(dim=-1), torch.ones(4))


def test_per_modality_heads_differ_and_have_no_joint_head() -> None:
    torch.manual_seed(0)
    two = OneTower(tower_config("tiny", width=32, depth=1, num_heads=2, vocab_size=VOCAB, head="per_modality"))
    assert set(two.heads) == {"image", "text"}
    pooled = torch.randn(4, 32)
    assert not torch.allclose(two.project(pooled, "image"), two.project(pooled, "text"))
    two.project(pooled, "image").sum().backward()
    assert two.heads["image"].weight.grad is not None and two.heads["text"].weight.grad is None
    with pytest.raises(ValueError, match="joint"):
        two.project(pooled, "joint")


def test_mlm_head_is_tied_to_the_token_embedding(tower: OneTower) -> None:
    assert tower.mlm_head.embedding.weight is tower.token_embed.weight


def test_image_size_must_divide_by_patch() -> None:
    with pytest.raises(ValueError, match="divisible"):
        OneTower(tower_config("tiny", image_size=30, vocab_size=VOCAB))


def test_momentum_copy_is_frozen_and_follows_the_ema_rule(tower: OneTower) -> None:
    target = momentum_copy(tower)
    assert all(not p.requires_grad for p in target.parameters())
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in tower.parameters():
            p.add_(1.0)
    ema_update(target, tower, 0.9)
    for old, new, online in zip(before, target.parameters(), tower.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online)


def test_cosine_momentum_schedule_endpoints() -> None:
    assert momentum_at(0, 100, 0.99, 1.0) == pytest.approx(0.99)
    assert momentum_at(100, 100, 0.99, 1.0) == pytest.approx(1.0)
    assert momentum_at(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    assert momentum_at(25, 100, 0.99, 1.0) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)


def test_presets_have_the_paper_scale() -> None:
    b16 = tower_config("vit_b16")
    assert (b16.width, b16.depth, b16.num_heads, b16.image_size, b16.max_text_len, b16.patch_size) == (
        768,
        12,
        12,
        224,
        40,
        16,
    )
    assert b16.num_patches == 196


def test_patch_embedding_as_one_matrix_product_is_the_strided_convolution() -> None:
    """`embed_patches` runs PatchEmbed's stride-p convolution as a GEMM (a GPU ran the convolution
    through a slow cuDNN kernel): the same tokens in the same order, from the same weights."""
    from timm.layers import PatchEmbed

    from oner_lab.model.tower import embed_patches

    torch.manual_seed(0)
    for size, patch, width in ((32, 8, 16), (48, 16, 24)):
        embed = PatchEmbed(img_size=size, patch_size=patch, in_chans=3, embed_dim=width)
        images = torch.randn(3, 3, size, size)
        torch.testing.assert_close(embed_patches(images, embed.proj), embed(images), rtol=1e-5, atol=1e-5)


def test_short_cpu_sequences_skip_sdpa_with_the_same_outputs_and_gradients() -> None:
    """`TowerAttention` runs a short CPU sequence as plain matmuls (SDPA's CPU kernel is slow there,
    docs/cost.md): every view's mask, padding and context rows included, the outputs and the gradients
    of the input and every weight equal SDPA's."""
    from timm.models.vision_transformer import Attention

    from oner_lab.model.attention import TowerAttention

    torch.manual_seed(0)
    attn = TowerAttention(24, 3, qkv_bias=True)
    images, ids, mask = inputs(2, batch=4)
    mask[1, 3:] = False  # rows with different padding
    for view in ("I", "T", "I|T", "T|I", "I,T"):
        num_image = 16 if "I" in view else 0
        text = mask if "T" in view else None
        length = 1 + num_image + (8 if text is not None else 0)
        bool_mask = attention_mask(view, num_image, text)
        x = torch.randn(4, length, 24)
        results = []
        for forward in (TowerAttention.forward, Attention.forward):  # plain products, then timm's SDPA
            attn.zero_grad()
            leaf = x.clone().requires_grad_()
            out = forward(attn, leaf, attn_mask=bool_mask)
            out.square().sum().backward()
            results.append((out, leaf.grad, [p.grad.clone() for p in attn.parameters()]))
        (out, grad, weights), (sdpa_out, sdpa_grad, sdpa_weights) = results
        torch.testing.assert_close(out, sdpa_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, sdpa_grad, rtol=1e-4, atol=1e-5)
        for mine, theirs in zip(weights, sdpa_weights, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_the_tower_calls_sdpa_only_for_long_cpu_sequences() -> None:
    """The tiny preset's passes never reach the CPU flash kernel; a sequence past `MATH_MAX_TOKENS` does."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from oner_lab.model.attention import MATH_MAX_TOKENS

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.__name__)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    tiny = OneTower(tower_config("tiny", vocab_size=VOCAB))
    images = torch.randn(2, 3, 24, 24)
    ids = torch.randint(5, VOCAB, (2, 20))
    with Ops() as short:
        tiny("I,T", images=images, text_ids=ids, text_mask=torch.ones(2, 20, dtype=torch.bool)).cls.sum().backward()
    assert not any("scaled_dot_product" in name for name in short.names), sorted(short.names)
    assert any(name.startswith("bmm") for name in short.names)
    long_text = MATH_MAX_TOKENS + 8
    wide = OneTower(tower_config("tiny", vocab_size=VOCAB, max_text_len=long_text))
    with Ops() as long:
        wide(
            "T", text_ids=torch.randint(5, VOCAB, (2, long_text)), text_mask=torch.ones(2, long_text, dtype=torch.bool)
        )
    assert any("scaled_dot_product" in name for name in long.names), sorted(long.names)


def packing_case(seed: int = 3) -> tuple[OneTower, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tiny preset in training mode and a batch whose captions fill 1 to all 20 positions."""
    torch.manual_seed(seed)
    model = OneTower(tower_config("tiny", vocab_size=VOCAB)).train()
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(6, 3, 24, 24, generator=g)
    ids = torch.randint(5, VOCAB, (6, 20), generator=g)
    mask = torch.arange(20)[None] < torch.tensor([5, 20, 9, 12, 1, 17])[:, None]
    patch_mask = torch.rand(6, 9, generator=g) < 0.5
    return model, images, ids, mask, patch_mask


def view_pass(model: OneTower, view: str, images, ids, mask, patch_mask, reads=None):
    """One forward pass of `view`, given the inputs that view takes."""
    return model(
        view,
        images=images if "I" in view else None,
        text_ids=ids if "T" in view else None,
        text_mask=mask if "T" in view else None,
        patch_mask=patch_mask if "I" in view else None,
        reads=reads,
    )


def packed_and_padded(model: OneTower, view: str, images, ids, mask, patch_mask):
    """(output, gradients) of one pass and backward, packed first, then with every position run."""
    results = []
    for pack_tokens in (True, False):
        model.pack_tokens = pack_tokens
        model.zero_grad()
        out = view_pass(model, view, images, ids, mask, patch_mask)
        loss = out.cls.square().sum()
        if out.text_tokens is not None:  # every real text token reaches the loss
            loss = loss + (out.text_tokens * mask[..., None]).sin().sum()
        loss.backward()
        results.append((out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}))
    return results


def test_a_cpu_pass_skipping_text_padding_gives_the_padded_outputs_and_gradients() -> None:
    """model/packing.py: the blocks run on the real tokens only; every view's [CLS] and real text tokens,
    and every weight's gradient, equal the pass over every position."""
    model, images, ids, mask, patch_mask = packing_case()
    for view in ("I", "T", "I|T", "T|I", "I,T"):
        (packed, packed_grads), (padded, padded_grads) = packed_and_padded(model, view, images, ids, mask, patch_mask)
        torch.testing.assert_close(packed.cls, padded.cls, rtol=1e-5, atol=1e-6)
        if "T" in view:
            torch.testing.assert_close(packed.text_tokens[mask], padded.text_tokens[mask], rtol=1e-5, atol=1e-6)
            assert not packed.text_tokens[~mask].any()  # zeros where no token is: nothing reads them
        assert packed_grads.keys() == padded_grads.keys()
        for name, grad in padded_grads.items():
            torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-5, msg=f"{view} {name}")


def test_the_padded_text_positions_never_reach_the_blocks_of_a_cpu_pass() -> None:
    """What makes packing pay: each block's projections see one row per real token, not per position.
    A compiled block, active drop path or a caption without padding keeps the padded pass."""
    model, images, ids, mask, patch_mask = packing_case()
    rows: list[int] = []
    model.blocks[-1].mlp.fc1.register_forward_hook(lambda module, args, out: rows.append(args[0][..., 0].numel()))
    model("I,T", images=images, text_ids=ids, text_mask=mask, patch_mask=patch_mask)
    assert rows == [6 * (1 + 9) + int(mask.sum())]  # [CLS] and 9 patches a row, then the captions' tokens
    model("T", text_ids=ids, text_mask=torch.ones_like(mask))
    assert rows[-1] == 6 * 21
    dropping = OneTower(tower_config("tiny", vocab_size=VOCAB, drop_path=0.1)).train()
    dropping.blocks[0].mlp.fc1.register_forward_hook(lambda module, args, out: rows.append(args[0][..., 0].numel()))
    dropping("T", text_ids=ids, text_mask=mask)
    assert rows[-1] == 6 * 21
    dropping.eval()("T", text_ids=ids, text_mask=mask)  # drop path is off in evaluation: packed again
    assert rows[-1] == 6 + int(mask.sum())
    from oner_lab.model.packing import packs

    x = torch.zeros(6, 21, model.cfg.width)
    assert packs(x, mask, None, model.blocks, drop_path=False)
    model.compile_blocks()  # wraps each block's call; nothing compiles until a block runs
    assert not packs(x, mask, None, model.blocks, drop_path=False)


def read_positions(mask: torch.Tensor, patch_mask: torch.Tensor, view: str, seed: int) -> torch.Tensor:
    """A `reads` for `view`: about a third of its image and real text positions, as MIM and MLM read theirs."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    if "I" in view:
        parts.append(patch_mask & (torch.rand(patch_mask.shape, generator=g) < 0.7))
    if "T" in view:
        parts.append(mask & (torch.rand(mask.shape, generator=g) < 0.3))
    return torch.cat(parts, dim=1)


def reading_pass(model: OneTower, view: str, images, ids, mask, patch_mask, reads):
    """(output, gradients) of one pass whose loss reads [CLS] and the `reads` positions alone."""
    model.zero_grad()
    out = view_pass(model, view, images, ids, mask, patch_mask, reads)
    loss = out.cls.square().sum()
    if not isinstance(reads, str):
        tokens = torch.cat([t for t in (out.image_tokens, out.text_tokens) if t is not None], dim=1)
        loss = loss + (tokens * reads[..., None]).sin().sum()
    loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_a_cpu_pass_runs_its_last_block_on_the_read_rows_with_the_full_outputs_and_gradients() -> None:
    """model/packing.py: the last block attends from, projects and runs the MLP on [CLS] and the read
    positions only; those outputs, and every gradient of a loss on them, equal the full pass's, and
    the unread positions come back as zeros. With reads="cls" the pass has no token outputs. In float64,
    where the only difference left, the order of float32 rounding, is too small to hide a wrong row."""
    model, images, ids, mask, patch_mask = packing_case(5)
    model, images = model.double(), images.double()
    close = {"rtol": 1e-9, "atol": 1e-11}
    width = model.cfg.width
    rows: list[int] = []
    model.blocks[-1].mlp.fc1.register_forward_hook(lambda module, args, out: rows.append(args[0].numel() // width))
    for i, view in enumerate(("I", "T", "I|T", "T|I", "I,T")):
        reads = read_positions(mask, patch_mask, view, seed=i)
        model.pack_tokens = True
        packed, packed_grads = reading_pass(model, view, images, ids, mask, patch_mask, reads)
        assert rows[-1] == 6 + int(reads.sum()), view  # [CLS] of each row, then the read positions
        model.pack_tokens = False
        full, full_grads = reading_pass(model, view, images, ids, mask, patch_mask, reads)
        assert rows[-1] == full.cls.shape[0] * (1 + reads.shape[1]), view  # every position, as a GPU runs it
        torch.testing.assert_close(packed.cls, full.cls, **close)
        got = torch.cat([t for t in (packed.image_tokens, packed.text_tokens) if t is not None], dim=1)
        want = torch.cat([t for t in (full.image_tokens, full.text_tokens) if t is not None], dim=1)
        torch.testing.assert_close(got[reads], want[reads], **close)
        assert not got[~reads].any(), view  # nothing reads them: zeros
        assert packed_grads.keys() == full_grads.keys()
        for name, grad in full_grads.items():
            torch.testing.assert_close(packed_grads[name], grad, **close, msg=f"{view} {name}")
        model.pack_tokens = True
        cls_only, cls_grads = reading_pass(model, view, images, ids, mask, patch_mask, "cls")
        assert rows[-1] == 6 and cls_only.image_tokens is None and cls_only.text_tokens is None, view
        model.pack_tokens = False
        everything, every_grad = reading_pass(model, view, images, ids, mask, patch_mask, "cls")
        torch.testing.assert_close(cls_only.cls, everything.cls, **close)
        for name, grad in every_grad.items():
            torch.testing.assert_close(cls_grads[name], grad, **close, msg=f"{view} cls {name}")


def test_reads_of_the_wrong_shape_are_refused_naming_the_positions() -> None:
    model, images, ids, mask, patch_mask = packing_case()
    with pytest.raises(
        ValueError, match=r"reads has shape \(6, 9\); this pass's image and text positions are \(6, 29\)"
    ):
        model("I,T", images=images, text_ids=ids, text_mask=mask, reads=patch_mask)
    with pytest.raises(ValueError, match="reads must be"):
        model("I", images=images, reads="tokens")


def test_packed_passes_recompute_under_activation_checkpointing_with_the_same_gradients() -> None:
    model, images, ids, mask, patch_mask = packing_case(4)
    model.activation_checkpointing = True
    calls: list[int] = []
    model.blocks[0].mlp.fc1.register_forward_hook(lambda module, args, out: calls.append(args[0].dim()))
    (_, checkpointed), (_, padded) = packed_and_padded(model, "I,T", images, ids, mask, patch_mask)
    assert calls == [2, 2, 3, 3]  # packed [N, W] rows run forward and again in backward, then the padded pass
    for name, grad in padded.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-5, msg=name)
