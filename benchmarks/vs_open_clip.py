"""Achieved FLOP/s of the lab's full OneR training step against open_clip's CLIP training step.

    pip install -e ".[benchmark]"     # open_clip_torch, for this script only
    python benchmarks/vs_open_clip.py [--steps 12] [--threads N]

Both steps run in this process at the same sizes (tower width and depth, image and patch size,
text length, batch, vocabulary), alternating one step of each so that the machine's drifting speed
falls on both alike. A step is forward, loss, backward and AdamW (OneR: every pass of the `oner`
variant with its masked terms, the momentum encoder and its EMA update; CLIP: two towers and the
InfoNCE loss). FLOPs are counted by torch's FlopCounterMode on one step of each, so the ratio is of
FLOP/s, not of samples/s (OneR does about 3x CLIP's work per sample). Beside them, the steps'
largest matmul alone, timed in the same rotation: the ceiling either step can approach here.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import open_clip
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from oner_lab.grad_sync import GradientSync
from oner_lab.model import OneTower, ema_update, momentum_copy
from oner_lab.objectives import Objective, StepInputs, ViewSettings, masked_views, resolve_terms
from oner_lab.presets import TowerConfig

VOCAB = 512


@dataclass(frozen=True)
class Size:
    width: int
    depth: int
    image: int
    patch: int
    text: int
    batch: int

    @property
    def heads(self) -> int:
        return max(1, self.width // 64)

    def __str__(self) -> str:
        return f"width {self.width} / depth {self.depth}, {self.image} px / patch {self.patch}, text {self.text}, batch {self.batch}"


SIZES = (Size(128, 4, 32, 8, 24, 128), Size(384, 6, 64, 16, 40, 64))


def inputs(size: Size) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(size.batch, 3, size.image, size.image, generator=g)
    ids = torch.randint(5, VOCAB, (size.batch, size.text), generator=g)
    lengths = torch.randint(size.text // 2, size.text, (size.batch, 1), generator=g)
    mask = torch.arange(size.text)[None, :] < lengths
    return images, torch.where(mask, ids, torch.zeros_like(ids)), mask


def oner_step(size: Size) -> Callable[[], None]:
    """The trainer's step (train.Trainer.train_step) without the data loader."""
    cfg = TowerConfig(
        width=size.width,
        depth=size.depth,
        num_heads=size.heads,
        mlp_ratio=4.0,
        patch_size=size.patch,
        image_size=size.image,
        max_text_len=size.text,
        proj_dim=size.width,
        vocab_size=VOCAB,
    )
    torch.manual_seed(0)
    model = OneTower(cfg)
    target = momentum_copy(model)
    weights = resolve_terms("oner", {}, True)
    settings = ViewSettings(masked_views(weights), False, "momentum", 0.15, 0.6, 3, VOCAB, torch.arange(4))
    objective = Objective(weights, settings)
    params = [p for m in (model, objective) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    sync = GradientSync(params)
    images, ids, mask = inputs(size)
    batch = StepInputs(images, images.flip(-1), ids, mask)
    seed = iter(range(10**9))

    def step() -> None:
        total, values = objective(model, target, batch, torch.Generator().manual_seed(next(seed)))
        temperature = objective.temperature_tensor()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        sync.step_report([*values.values(), total], same=[temperature])
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema_update(target, model, 0.99)

    return step


def clip_step(size: Size) -> Callable[[], None]:
    """open_clip's training step: CLIP model, ClipLoss, AdamW, as its training loop does on one process."""
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=size.width,
        vision_cfg=open_clip.CLIPVisionCfg(
            layers=size.depth,
            width=size.width,
            head_width=size.width // size.heads,
            patch_size=size.patch,
            image_size=size.image,
        ),
        text_cfg=open_clip.CLIPTextCfg(
            context_length=size.text, vocab_size=VOCAB, width=size.width, heads=size.heads, layers=size.depth
        ),
    )
    loss = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, ids, _ = inputs(size)

    def step() -> None:
        out = model(images, ids)
        image_features, text_features, logit_scale = out[:3]
        total = loss(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)

    return step


def flops(step: Callable[[], None]) -> int:
    """One step's FLOPs, attention included: counted under SDPA's math backend, because FlopCounterMode
    has no formula for the CPU flash kernel and would leave CLIP's attention out (OneR's short CPU
    sequences run as plain matmuls, which it counts either way)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def gemm(size: Size) -> Callable[[], None]:
    """The steps' largest matmul alone (the MLP's first layer over a joint sequence of the batch), repeated to
    take about a tenth of a CLIP step: the ceiling a step's FLOP/s can approach on this machine."""
    g = torch.Generator().manual_seed(0)
    rows = size.batch * (1 + (size.image // size.patch) ** 2 + size.text)
    a = torch.randn(rows, size.width, generator=g)
    b = torch.randn(size.width, 4 * size.width, generator=g)

    def step() -> None:
        for _ in range(8):
            torch.mm(a, b)

    return step


def compare(size: Size, steps: int) -> dict[str, float]:
    ours, theirs, plain = oner_step(size), clip_step(size), gemm(size)
    for step in (ours, theirs, ours, theirs):  # warm-up: allocator and kernels
        step()
    counted = {"oner": flops(ours), "clip": flops(theirs), "gemm": flops(plain)}
    times: dict[str, list[float]] = {"oner": [], "clip": [], "gemm": []}
    for _ in range(steps):
        for name, step in (("oner", ours), ("clip", theirs), ("gemm", plain)):
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    result = {}
    for name in ("oner", "clip", "gemm"):
        seconds = statistics.median(times[name])
        result[f"{name}_gflop"] = counted[name] / 1e9
        result[f"{name}_s"] = seconds
        result[f"{name}_gflops"] = counted[name] / seconds / 1e9
    result["ratio"] = result["oner_gflops"] / result["clip_gflops"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="timed steps of each, alternating (median taken)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, open_clip {open_clip.__version__}, {torch.get_num_threads()} threads, CPU float32"
    )
    print(
        f"{'size':<58} {'OneR GFLOP':>10} {'s':>6} {'GFLOP/s':>8} {'CLIP GFLOP':>10} {'s':>6} {'GFLOP/s':>8} "
        f"{'ratio':>6} {'GEMM GFLOP/s':>12} {'OneR':>5} {'CLIP':>5}"
    )
    for size in SIZES:
        r = compare(size, args.steps)
        print(
            f"{str(size):<58} {r['oner_gflop']:>10.1f} {r['oner_s']:>6.3f} {r['oner_gflops']:>8.1f} "
            f"{r['clip_gflop']:>10.1f} {r['clip_s']:>6.3f} {r['clip_gflops']:>8.1f} {r['ratio']:>5.2f}x "
            f"{r['gemm_gflops']:>12.1f} {r['oner_gflops'] / r['gemm_gflops']:>5.0%} {r['clip_gflops'] / r['gemm_gflops']:>5.0%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
