"""Zero-shot evaluation against brute-force loops, hand-computed cases and one-hot encoders."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from oner_lab import evaluate as ev
from oner_lab.data.batch import ClassificationSet, RetrievalSet
from oner_lab.evaluate import (
    alignment,
    class_embeddings,
    classification_accuracy,
    evaluate,
    modality_gap,
    retrieval_recall,
)

KS = (1, 2, 5, 10)


def argsort_recall(sim: torch.Tensor, caption_image: torch.Tensor, ks) -> dict[str, float]:
    """The usual COCO loop (ALBEF-style): sort each row, find the first ground truth's position."""
    n_images, n_captions = sim.shape
    tr_rank, ir_rank = [], []
    for i in range(n_images):
        order = sim[i].argsort(descending=True).tolist()
        tr_rank.append(min(order.index(m) for m in range(n_captions) if caption_image[m] == i))
    for m in range(n_captions):
        ir_rank.append(sim[:, m].argsort(descending=True).tolist().index(int(caption_image[m])))
    out = {f"tr_r{k}": 100 * sum(r < k for r in tr_rank) / n_images for k in ks}
    out |= {f"ir_r{k}": 100 * sum(r < k for r in ir_rank) / n_captions for k in ks}
    return out | {"rsum": sum(out.values())}


def pessimistic_rank(scores: list[float], gt: set[int]) -> int:
    """Documented tie rule, as a loop: non-ground-truth items scoring >= the best ground truth."""
    best = max(scores[j] for j in gt)
    return sum(1 for j, s in enumerate(scores) if j not in gt and s >= best)


def varying_captions(n_images: int, gen: torch.Generator) -> torch.Tensor:
    counts = torch.randint(1, 8, (n_images,), generator=gen)
    caption_image = torch.repeat_interleave(torch.arange(n_images), counts)
    return caption_image[torch.randperm(len(caption_image), generator=gen)]


@pytest.mark.parametrize("chunk_elements", [ev._CHUNK_ELEMENTS, 7])
@pytest.mark.parametrize("layout", ["five_each", "varying"])
def test_retrieval_recall_matches_argsort_loop(layout, chunk_elements, monkeypatch):
    monkeypatch.setattr(ev, "_CHUNK_ELEMENTS", chunk_elements)  # 7 forces one row per chunk
    gen = torch.Generator().manual_seed(0)
    n_images = 40
    if layout == "five_each":
        caption_image = torch.arange(n_images).repeat_interleave(5)
    else:
        caption_image = varying_captions(n_images, gen)
    # A weak signal on the true pairs so recall is neither 0 nor 100.
    sim = torch.randn(n_images, len(caption_image), generator=gen)
    sim[caption_image, torch.arange(len(caption_image))] += 1.5
    got = retrieval_recall(sim, caption_image, ks=KS)
    want = argsort_recall(sim, caption_image, KS)
    assert got == pytest.approx(want)
    assert 0 < got["tr_r1"] < 100 and 0 < got["ir_r1"] < 100


def test_retrieval_ties_count_against_the_model():
    gen = torch.Generator().manual_seed(1)
    caption_image = varying_captions(30, gen)
    sim = torch.randint(0, 4, (30, len(caption_image)), generator=gen).float()  # many ties
    got = retrieval_recall(sim, caption_image, ks=KS)
    tr = [
        pessimistic_rank(sim[i].tolist(), {m for m, g in enumerate(caption_image.tolist()) if g == i})
        for i in range(30)
    ]
    ir = [pessimistic_rank(sim[:, m].tolist(), {int(caption_image[m])}) for m in range(len(caption_image))]
    for k in KS:
        assert got[f"tr_r{k}"] == pytest.approx(100 * sum(r < k for r in tr) / len(tr))
        assert got[f"ir_r{k}"] == pytest.approx(100 * sum(r < k for r in ir) / len(ir))


def test_retrieval_hand_built_three_images_six_captions():
    caption_image = torch.tensor([0, 0, 1, 1, 2, 2])
    sim = torch.tensor(
        [
            # captions: 0a   0b   1a   1b   2a   2b
            [0.9, 0.1, 0.8, 0.0, 0.0, 0.0],  # image 0: own caption first -> tr rank 0
            [0.7, 0.0, 0.2, 0.3, 0.6, 0.0],  # image 1: best own (0.3) behind 0.7, 0.6 -> rank 2
            [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],  # image 2: all tied -> 4 non-gt ties -> rank 4
        ]
    )
    # ir ranks (column-wise, other images >= gt): 0a:0, 0b:1, 1a:2, 1b:1, 2a:1, 2b:0
    got = retrieval_recall(sim, caption_image, ks=(1, 3, 5))
    assert got == pytest.approx(
        {
            "tr_r1": 100 / 3,
            "tr_r3": 200 / 3,
            "tr_r5": 100.0,
            "ir_r1": 200 / 6,
            "ir_r3": 100.0,
            "ir_r5": 100.0,
            "rsum": 100 / 3 + 200 / 3 + 100 + 200 / 6 + 100 + 100,
        }
    )


def test_constant_similarity_gets_no_hits_at_one():
    got = retrieval_recall(torch.zeros(4, 20), torch.arange(4).repeat_interleave(5))
    assert got["tr_r1"] == 0 and got["ir_r1"] == 0


@pytest.mark.parametrize(
    "sim, caption_image, match",
    [
        (torch.zeros(3, 4), torch.tensor([0, 1, 1, 1]), "images \\[2\\]"),
        (torch.zeros(3, 4), torch.tensor([0, 1, 2, 3]), "values in \\[0, 3\\)"),
        (torch.zeros(3, 4), torch.tensor([0, 1, 2]), "expected sim"),
        (torch.tensor([[0.0, float("nan")], [0.0, 0.0]]), torch.tensor([0, 1]), "non-finite"),
    ],
)
def test_retrieval_rejects_bad_input(sim, caption_image, match):
    with pytest.raises(ValueError, match=match):
        retrieval_recall(sim, caption_image)


def test_classification_accuracy_matches_loop():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randint(0, 5, (200, 12), generator=gen).float()  # ties included
    labels = torch.randint(0, 12, (200,), generator=gen)
    got = classification_accuracy(logits, labels, ks=(1, 3, 5))
    ranks = [pessimistic_rank(row, {int(y)}) for row, y in zip(logits.tolist(), labels)]
    assert got == pytest.approx({f"top{k}": 100 * sum(r < k for r in ranks) / 200 for k in (1, 3, 5)})
    # Without ties it is plain top-k.
    logits = torch.randn(200, 12, generator=gen)
    topk = logits.topk(5, dim=1).indices
    assert classification_accuracy(logits, labels)["top5"] == pytest.approx(
        100 * sum(int(y) in row for y, row in zip(labels, topk.tolist())) / 200
    )


def test_class_embeddings_ensemble_by_hand():
    prompts = torch.tensor([[3.0, 0.0], [0.0, 4.0], [0.0, -2.0]], dtype=torch.bfloat16)
    got = class_embeddings(prompts, torch.tensor([0, 0, 1]), num_classes=2)
    # class 0: normalise -> (1,0), (0,1); mean (0.5,0.5); renormalise. Class 1: (0,-1).
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)], [0.0, -1.0]]))
    with pytest.raises(ValueError, match="no prompt to classes \\[2\\]"):
        class_embeddings(prompts, torch.tensor([0, 0, 1]), num_classes=3)


def test_modality_gap_and_alignment_known_values():
    emb = torch.randn(50, 8, generator=torch.Generator().manual_seed(3))
    assert modality_gap(emb, 3 * emb) == pytest.approx(0, abs=1e-6)  # scale does not matter
    # image mean (0.5, 0.5), text mean (1, 0): gap = ||(-0.5, 0.5)|| = sqrt(0.5)
    images, texts = torch.tensor([[2.0, 0.0], [0.0, 5.0]]), torch.tensor([[1.0, 0.0], [7.0, 0.0]])
    assert modality_gap(images, texts) == pytest.approx(math.sqrt(0.5))
    # pairs: (img0, txt0) cos 1, (img0, txt1) cos 1, (img1, txt1 -> caption of image 1) cos 0
    three_texts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert alignment(images, three_texts, torch.tensor([0, 0, 1])) == pytest.approx(2 / 3)


DIM = 16


def one_hot_image(images: torch.Tensor) -> torch.Tensor:
    """Image n is filled with the index it should embed to."""
    assert images.shape[0] <= 4  # evaluate batches at batch_size=4
    return F.one_hot(images[:, 0, 0, 0].long(), DIM).to(torch.bfloat16)


def one_hot_text(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    assert ids.shape[0] <= 4 and mask.dtype == torch.bool
    return F.one_hot(ids[:, 0], DIM).to(torch.bfloat16)


def retrieval_set(image_code: list[int], caption_code: torch.Tensor, caption_image: torch.Tensor) -> RetrievalSet:
    n = len(image_code)
    images = torch.tensor(image_code, dtype=torch.float32)[:, None, None, None].expand(n, 3, 2, 2)
    ids = torch.stack([caption_code, torch.zeros_like(caption_code)], dim=1)
    return RetrievalSet(
        "r", images, ids, torch.ones_like(ids, dtype=torch.bool), caption_image, [""] * len(caption_image)
    )


def classification_set(image_code: list[int], labels: list[int], n_classes: int, n_templates: int):
    n = len(image_code)
    images = torch.tensor(image_code, dtype=torch.float32)[:, None, None, None].expand(n, 3, 2, 2)
    prompt_class = torch.arange(n_classes).repeat_interleave(n_templates)
    ids = torch.stack([prompt_class, torch.arange(len(prompt_class))], dim=1)
    return ClassificationSet(
        "c",
        images,
        torch.tensor(labels),
        [str(c) for c in range(n_classes)],
        ["{}"] * n_templates,
        ids,
        torch.ones_like(ids, dtype=torch.bool),
        prompt_class,
    )


def test_evaluate_one_hot_encoders_end_to_end():
    caption_image = torch.arange(10).repeat_interleave(5)
    perfect = retrieval_set(list(range(10)), caption_image, caption_image)
    # Captions of images 0 and 1 embed to each other's image: both miss text retrieval at any K;
    # their captions score 0 with the true image, tied with the 9 others -> image retrieval rank 9.
    swapped = torch.tensor([1, 0, *range(2, 10)])[caption_image]
    confused = retrieval_set(list(range(10)), swapped, caption_image)
    labels = [0, 1, 2, 3, 4, 5, 0, 1]
    cls = classification_set([0, 1, 2, 3, 4, 5, 1, 2], labels, n_classes=6, n_templates=3)  # last two wrong

    got = evaluate(
        one_hot_image,
        one_hot_text,
        {"shapes": perfect, "swapped": confused, "shapes_cls": cls},
        batch_size=4,
        device="cpu",
    )

    recall_keys = ["tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10"]
    assert set(got) == (
        {f"eval/{s}/{m}" for s in ("shapes", "swapped") for m in [*recall_keys, "rsum", "modality_gap", "alignment"]}
        | {"eval/shapes_cls/top1", "eval/shapes_cls/top5"}
    )
    assert all(isinstance(v, float) for v in got.values())
    assert [got[f"eval/shapes/{k}"] for k in recall_keys] == [100.0] * 6
    assert got["eval/shapes/rsum"] == 600.0
    assert got["eval/shapes/alignment"] == pytest.approx(1.0)
    assert got["eval/shapes/modality_gap"] == pytest.approx(0.0, abs=1e-6)
    assert [got[f"eval/swapped/{k}"] for k in recall_keys] == pytest.approx([80, 80, 80, 80, 80, 100])
    assert got["eval/swapped/alignment"] == pytest.approx(0.8)
    # The two wrong images score 0 on their class, tied with the 5 other classes -> missed even at 5.
    assert got["eval/shapes_cls/top1"] == pytest.approx(75.0)
    assert got["eval/shapes_cls/top5"] == pytest.approx(75.0)


def test_evaluate_names_an_unknown_set():
    with pytest.raises(TypeError, match="'mystery'"):
        evaluate(one_hot_image, one_hot_text, {"mystery": object()})
