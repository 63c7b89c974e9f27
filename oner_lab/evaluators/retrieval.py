"""The retrieval task: COCO-protocol recall both ways, the modality gap and alignment of a `RetrievalSet`."""

from __future__ import annotations

from oner_lab import evaluate, metric_names
from oner_lab.evaluators.registry import Encoder, Task, register_task


def score(encode_image: Encoder, encode_text: Encoder, data, batch_size: int, device) -> dict[str, float]:
    images = evaluate.encode(encode_image, (data.images,), batch_size, device)
    texts = evaluate.encode(encode_text, (data.text_ids, data.text_mask), batch_size, device)
    with evaluate.scores_in_fp32(device):
        metrics = evaluate.retrieval_recall(images @ texts.T, data.caption_image)
        metrics["modality_gap"] = evaluate.modality_gap(images, texts)
        metrics["alignment"] = evaluate.alignment(images, texts, data.caption_image)
    return metrics


TASK = register_task(Task("retrieval", metric_names.RETRIEVAL, score))
