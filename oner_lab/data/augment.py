"""Random resized crop (and optional flip) for a whole batch in one `roi_align` call.

The same distribution as torchvision's RandomResizedCrop (area fraction uniform in `scale`,
log-uniform aspect ratio, up to 10 tries, else the whole image), but with continuous boxes and
bilinear resampling done for all samples at once, which keeps a 128-image batch in milliseconds on CPU.
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align

from .batch import normalise

_TRIES = 10


def crop_boxes(
    generator: torch.Generator,
    count: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """[count, 4] boxes (x1, y1, x2, y2) in pixels; the first valid of 10 draws per sample, else the whole image."""
    area = torch.empty(count, _TRIES).uniform_(scale[0], scale[1], generator=generator) * (height * width)
    log_ratio = torch.empty(count, _TRIES).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    w = (area * aspect).sqrt()
    h = (area / aspect).sqrt()
    valid = (w <= width) & (h <= height)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)
    found = valid.any(dim=1)
    w = torch.where(found, w.gather(1, first).squeeze(1), torch.tensor(float(width)))
    h = torch.where(found, h.gather(1, first).squeeze(1), torch.tensor(float(height)))
    x1 = torch.rand(count, generator=generator) * (width - w)
    y1 = torch.rand(count, generator=generator) * (height - h)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def crop_views(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor | None) -> torch.Tensor:
    """Normalised float crops resized back to H x W.

    images: uint8 [B, 3, H, W]; boxes: [V, B, 4] (V views of each image); flips: [V, B] bool or None.
    Returns [V, B, 3, H, W].
    """
    views, count = boxes.shape[:2]
    height, width = images.shape[-2:]
    owner = torch.arange(count, dtype=boxes.dtype, device=boxes.device).repeat(views)[:, None]
    rois = torch.cat([owner, boxes.reshape(views * count, 4)], dim=1)
    # aligned=True puts samples at pixel centres: the whole-image box reproduces the image exactly;
    # sampling_ratio=0 averages ceil(box/output) points per bin, so downscaling crops are not aliased.
    crops = roi_align(images.float(), rois, (height, width), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    crops = crops.view(views, count, *crops.shape[1:])
    if flips is not None:
        crops = torch.where(flips[:, :, None, None, None], crops.flip(-1), crops)
    return normalise(crops)
