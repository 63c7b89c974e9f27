"""The classification task: prompt-ensembled zero-shot top-k accuracy of a `ClassificationSet`."""

from __future__ import annotations

from oner_lab import evaluate, metric_names
from oner_lab.evaluators.registry import Encoder, Task, register_task


def score(encode_image: Encoder, encode_text: Encoder, data, batch_size: int, device) -> dict[str, float]:
    images = evaluate.encode(encode_image, (data.images,), batch_size, device)
    prompts = evaluate.encode(encode_text, (data.prompt_ids, data.prompt_mask), batch_size, device)
    with evaluate.scores_in_fp32(device):
        classes = evaluate.class_embeddings(prompts, data.prompt_class, len(data.class_names))
        return evaluate.classification_accuracy(images @ classes.T, data.labels)


TASK = register_task(Task("classification", metric_names.CLASSIFICATION, score))
