"""What a first GPU job depends on, checked on the CPU: device choice per task layout, refusal to
train on the CPU when SLURM gave GPUs, ranks agreeing on a failure, fp32 scores under bf16
autocast, and activation checkpointing giving the same losses and gradients."""

from __future__ import annotations

import math
import multiprocessing
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from oner_lab.distributed import DeviceError, gpus_requested, select_device
from oner_lab.evaluate import evaluate
from oner_lab.objectives import info_nce


# --- device per task layout --------------------------------------------------------------
@pytest.mark.parametrize(
    ("requested", "local_rank", "world", "visible", "expected"),
    [
        ("auto", 0, 1, 0, "cpu"),  # a CPU machine, no GPUs asked for
        ("auto", 3, 8, 8, "cuda:3"),  # every task sees the node's 8 GPUs: its local rank's
        ("cuda", 7, 16, 8, "cuda:7"),
        ("auto", 5, 8, 1, "cuda:0"),  # one GPU bound per task: it is cuda:0 in every task
        ("cuda", 2, 4, 1, "cuda:0"),
        ("cuda:1", 0, 1, 2, "cuda:1"),  # one process may pick a GPU
        ("cpu", 3, 8, 8, "cpu"),  # asked for on purpose
    ],
)
def test_device_for_every_task_layout(requested: str, local_rank: int, world: int, visible: int, expected: str) -> None:
    device = select_device(
        requested, local_rank=local_rank, world_size=world, visible=visible, gpus_requested=visible > 0
    )
    assert device == torch.device(expected)


def test_one_explicit_gpu_for_many_ranks_is_refused() -> None:
    with pytest.raises(DeviceError, match=r"all 8 ranks on one GPU; use `cuda` or `auto`"):
        select_device("cuda:0", local_rank=1, world_size=8, visible=8, gpus_requested=True)


def test_more_ranks_than_visible_gpus_is_refused() -> None:
    with pytest.raises(DeviceError, match="local rank 3 but this task sees only 2 GPUs"):
        select_device("auto", local_rank=3, world_size=4, visible=2, gpus_requested=True)


def test_job_given_gpus_but_torch_sees_none_stops_naming_versions() -> None:
    env = {"SLURM_GPUS_ON_NODE": "8"}
    assert gpus_requested(env)
    with pytest.raises(DeviceError) as error:
        select_device("auto", local_rank=0, world_size=8, visible=0, gpus_requested=gpus_requested(env))
    message = str(error.value)
    assert "silently run on the CPU" in message
    assert f"torch {torch.__version__} built for CUDA {torch.version.cuda or 'none'}" in message
    assert "train.device: cpu" in message
    with pytest.raises(DeviceError, match="train.device is cuda"):
        select_device("cuda", local_rank=0, world_size=1, visible=0, gpus_requested=False)


def test_no_gpu_request_in_a_cpu_job() -> None:
    assert not gpus_requested({})
    assert not gpus_requested({"SLURM_GPUS_ON_NODE": "0", "SLURM_JOB_GPUS": ""})
    assert gpus_requested({"SLURM_STEP_GPUS": "0,1"})


# --- ranks agree on a non-finite loss --------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out: multiprocessing.Queue) -> None:
    """One rank of a tiny real run; rank 1's MIM loss turns NaN at step 3, rank 0's stays finite."""
    from oner_lab.distributed import init_from_env
    from oner_lab.spec.config import RunConfig
    from oner_lab.train import NonFiniteLossError, Trainer

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    config = RunConfig.model_validate(
        {
            "objective": {"variant": "oner"},
            "data": {"train_size": 256, "eval_images": 16, "cls_images_per_class": 2, "cache_dir": os.environ["CACHE"]},
            "train": {"steps": 10, "batch_size": 16, "checkpoint_every": 100, "device": "cpu"},
            "eval": {"sets": ["shapes"]},
        }
    )
    info = init_from_env(torch.device("cpu"))
    trainer = Trainer(config, __import__("pathlib").Path(os.environ["RUN_DIR"]), info)
    started = time.monotonic()
    try:
        for _ in range(10):
            if rank == 1 and trainer.step == 3:
                with torch.no_grad():  # this rank's MIM head alone goes bad: only its masked-image term is NaN
                    trainer.model.mim_head.bias.fill_(float("nan"))
            trainer.train_step()
        out.put((rank, "finished", trainer.step, time.monotonic() - started))
    except NonFiniteLossError as error:
        out.put((rank, str(error), trainer.step, time.monotonic() - started))
    finally:
        dist.destroy_process_group()


def _two_ranks(target, tmp_path, timeout_s: float) -> list[tuple]:  # noqa: ANN001 - a rank function
    """Runs `target(rank, port, queue)` in two spawned processes (gloo over loopback); their reports by rank."""
    os.environ["CACHE"] = str(tmp_path / "cache")
    os.environ["RUN_DIR"] = str(tmp_path / "runs")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=target, args=(rank, port, out)) for rank in range(2)]
    for proc in procs:
        proc.start()
    results = sorted(out.get(timeout=timeout_s) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    return results


def test_a_nan_on_one_rank_stops_both_with_the_same_error(tmp_path) -> None:
    (r0, msg0, step0, _), (r1, msg1, step1, _) = _two_ranks(_rank, tmp_path, 120)
    assert (r0, r1) == (0, 1)
    assert msg0 == msg1, "both ranks raise the same error"
    assert msg0.startswith("non-finite loss at step 3 on rank(s) 1 in term(s) ")
    assert step0 == step1 == 3


def _drop_path_rank(rank: int, port: int, out: multiprocessing.Queue) -> None:
    """One rank of a two-rank run with drop-path: 4 steps straight, and 2 steps, a checkpoint (rank 0
    writes it), a fresh trainer resuming from it and 2 more steps. Reports the drop-path mask of the
    last block at step 0 and whether the resumed weights equal the straight ones bit for bit."""
    from pathlib import Path

    from oner_lab.distributed import init_from_env
    from oner_lab.spec.config import RunConfig
    from oner_lab.train import Trainer

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    config = RunConfig.model_validate(
        {
            "model": {"preset": "tiny", "width": 32, "depth": 2, "num_heads": 2, "drop_path": 0.5},
            "objective": {"variant": "itc"},
            "data": {"train_size": 256, "eval_images": 16, "cls_images_per_class": 2, "cache_dir": os.environ["CACHE"]},
            "train": {"steps": 4, "batch_size": 32, "checkpoint_every": 100, "device": "cpu"},
            "eval": {"sets": ["shapes"]},
        }
    )
    info = init_from_env(torch.device("cpu"))
    root = Path(os.environ["RUN_DIR"])
    try:
        straight = Trainer(config, root / "straight", info)
        masks: list[torch.Tensor] = []
        straight.model.blocks[-1].drop_path1.register_forward_hook(
            lambda module, args, output: masks.append(output.flatten(1).abs().sum(1) > 0) if not masks else None
        )
        for _ in range(4):
            straight.train_step()
        first = Trainer(config, root / "resumed", info)
        for _ in range(2):
            first.train_step()
        first.save()
        dist.barrier()  # rank 0 has written the checkpoint every rank resumes from
        resumed = Trainer(config, root / "resumed", info)
        assert resumed.resume() and resumed.step == 2
        for _ in range(2):
            resumed.train_step()
        same = all(
            torch.equal(a, b) for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values())
        )
        out.put((rank, masks[0].tolist(), same))
    finally:
        dist.destroy_process_group()


def test_ranks_draw_their_own_drop_path_and_a_resume_draws_the_same_on_every_rank(tmp_path) -> None:
    (_, mask0, same0), (_, mask1, same1) = _two_ranks(_drop_path_rank, tmp_path, 180)
    assert 0 < sum(mask0) < len(mask0) and 0 < sum(mask1) < len(mask1), "drop-path 0.5 keeps some rows, not all"
    assert mask0 != mask1, "both ranks dropped the same rows: one random stream for every rank"
    assert same0 and same1, "a resumed rank drew other drop-path masks than the uninterrupted run"


# --- fp32 scores under bf16 autocast ------------------------------------------------------------
def test_eval_scores_are_fp32_under_bf16_autocast() -> None:
    g = torch.Generator().manual_seed(0)
    n_images, per_image, dim = 64, 5, 32
    # images close to each other and captions closer still to their image: every score is near 1,
    # where bf16 resolves only 2^-8, so bf16 scores would tie and flip ranks
    image_emb = F.normalize(torch.ones(dim) + 0.05 * torch.randn(n_images, dim, generator=g), dim=-1)
    text_emb = F.normalize(
        image_emb.repeat_interleave(per_image, 0) + 0.01 * torch.randn(n_images * per_image, dim, generator=g), dim=-1
    )

    class Set:
        task = "retrieval"  # scored by oner_lab/evaluators/retrieval.py
        images = torch.arange(n_images).float()[:, None]
        text_ids = torch.arange(n_images * per_image)[:, None]
        text_mask = torch.ones(n_images * per_image, 1, dtype=torch.bool)
        caption_image = torch.arange(n_images).repeat_interleave(per_image)

    # exact fp32 embeddings whatever the autocast: only the scoring can differ between the two calls
    enc_image = lambda x: image_emb[x[:, 0].long()]  # noqa: E731
    enc_text = lambda ids, mask: text_emb[ids[:, 0]]  # noqa: E731
    from oner_lab.evaluate import retrieval_recall

    reference = {f"eval/s/{k}": v for k, v in retrieval_recall(image_emb @ text_emb.T, Set.caption_image).items()}
    assert evaluate(enc_image, enc_text, {"s": Set()}, batch_size=32) | reference == evaluate(
        enc_image, enc_text, {"s": Set()}, batch_size=32
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_bf16 = evaluate(
            lambda x: enc_image(x).float(), lambda i, m: enc_text(i, m).float(), {"s": Set()}, batch_size=32
        )
        scale = torch.tensor(math.log(1 / 0.07))
        loss_bf16 = info_nce(image_emb, text_emb[::per_image], scale)
    loss_fp32 = info_nce(image_emb, text_emb[::per_image], scale)
    assert loss_bf16.dtype == torch.float32
    torch.testing.assert_close(loss_bf16, loss_fp32)
    for key, value in reference.items():  # every recall equals the fp32 one computed outside evaluate
        assert under_bf16[key] == pytest.approx(value, abs=1e-9), key


# --- activation checkpointing -------------------------------------------------------------------
def test_activation_checkpointing_gives_identical_losses_and_gradients(tmp_path) -> None:
    from oner_lab.distributed import DistInfo
    from oner_lab.spec.config import RunConfig
    from oner_lab.train import Trainer

    def two_steps(checkpointing: bool) -> tuple[list[float], list[torch.Tensor]]:
        config = RunConfig.model_validate(
            {
                "model": {"drop_path": 0.1},  # drop-path randomness must replay in the recomputation
                "objective": {"variant": "oner_cumulative"},
                "data": {
                    "train_size": 256,
                    "eval_images": 16,
                    "cls_images_per_class": 2,
                    "cache_dir": str(tmp_path / "c"),
                },
                "train": {"steps": 2, "batch_size": 16, "device": "cpu", "activation_checkpointing": checkpointing},
                "eval": {"sets": ["shapes"]},
            }
        )
        trainer = Trainer(config, tmp_path / f"run{checkpointing}", DistInfo(0, 1, 0))
        losses = [trainer.train_step()["train/loss"] for _ in range(2)]
        return losses, [p.detach().clone() for p in trainer.model.parameters()]

    plain_losses, plain_weights = two_steps(False)
    ckpt_losses, ckpt_weights = two_steps(True)
    assert ckpt_losses == pytest.approx(plain_losses, rel=1e-6, abs=1e-6)
    for a, b in zip(plain_weights, ckpt_weights):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _trainer(tmp_path, name: str, variant: str = "oner", eval_images: int = 16, **train):
    from oner_lab.distributed import DistInfo
    from oner_lab.spec.config import RunConfig
    from oner_lab.train import Trainer

    config = RunConfig.model_validate(
        {
            "objective": {"variant": variant},
            "data": {
                "train_size": 256,
                "eval_images": eval_images,
                "cls_images_per_class": 2,
                "cache_dir": str(tmp_path / "c"),
            },
            "train": {"steps": 3, "batch_size": 16, "device": "cpu", **train},
            "eval": {"sets": ["shapes"]},
        }
    )
    return Trainer(config, tmp_path / name, DistInfo(0, 1, 0))


# --- bf16 autocast and torch.compile on CPU ---------------------------------------------------------
def test_bf16_autocast_on_cpu_keeps_losses_weights_and_momentum_in_float32(tmp_path) -> None:
    """The CUDA precision path (bf16 autocast) run on CPU: every term's loss comes out float32, the
    weights, the momentum copy and AdamW's state stay float32, and the losses follow fp32's."""
    fp32, bf16 = _trainer(tmp_path, "fp32", precision="fp32"), _trainer(tmp_path, "bf16", precision="bf16")
    with bf16.autocast:  # the step's own context: the terms as the loss sees them
        total, values = bf16.objective(bf16.model, bf16.target, bf16_inputs(bf16), torch.Generator().manual_seed(0))
    assert total.dtype == torch.float32 and {v.dtype for v in values.values()} == {torch.float32}, values
    plain = [fp32.train_step()["train/loss"] for _ in range(3)]
    mixed = [bf16.train_step()["train/loss"] for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(mixed)))
    assert mixed == pytest.approx(plain, rel=0.03), "bf16 losses drift from fp32 beyond bf16 rounding"
    assert mixed != plain, "precision=bf16 did not change the arithmetic (autocast not in effect)"
    for module in (bf16.model, bf16.target, bf16.objective):
        assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert {s.dtype for state in bf16.optimizer.state.values() for s in state.values() if s.dim()} == {torch.float32}


def bf16_inputs(trainer):
    """Step 0's global batch as `Trainer.train_step` builds it."""
    from oner_lab.objectives import StepInputs

    t = trainer.config.train
    batch = trainer.data.train.batch(0, t.batch_size, t.seed, 0, 1)
    return StepInputs(batch.images, batch.images_target, batch.text_ids, batch.text_mask)


def test_compiled_blocks_give_the_eager_losses_and_weights(tmp_path) -> None:
    """`train.compile` compiles the blocks of the tower and of its momentum copy in place (inductor on
    CPU): the same losses to float rounding (`oner`'s CMC reads the momentum copy, without gradient), and
    the same parameter names, so checkpoints load either way."""
    eager, compiled = _trainer(tmp_path, "eager", "oner"), _trainer(tmp_path, "compiled", "oner", compile=True)
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())
    assert list(compiled.target.state_dict()) == list(eager.target.state_dict())
    for tower in (compiled.model, compiled.target):  # nn.Module.compile's in-place wrapper, on every block
        assert all(block._compiled_call_impl is not None for block in tower.blocks)
    plain = [eager.train_step()["train/loss"] for _ in range(3)]
    fused = [compiled.train_step()["train/loss"] for _ in range(3)]
    assert fused == pytest.approx(plain, rel=1e-4)
    for a, b in zip(eager.model.parameters(), compiled.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_evaluation_under_compile_runs_eager_and_leaves_the_steps_graphs_alone(tmp_path) -> None:
    """Evaluation and the embedding sample meet batch sizes the step never does. Compiled, such a second
    shape made dynamo compile shape-generic graphs, which the step's passes then ran from that step on;
    a resumed run meets the sample at another step, so it rounded differently from the straight run
    (seen on an H200). Under `train.compile` they run eager: no graph is compiled after the first step."""
    torch._dynamo.reset()  # the blocks share one code object with every earlier test's towers
    trainer = _trainer(tmp_path, "compiled", "oner", eval_images=24, compile=True)
    stats = torch._dynamo.utils.counters["stats"]
    trainer.train_step()
    graphs = stats["unique_graphs"]
    assert graphs > 0, "the step compiled nothing"
    metrics = trainer.evaluate()
    trainer.log_embeddings(None, "early")
    trainer.train_step()
    assert stats["unique_graphs"] == graphs, "evaluation or the embedding sample compiled new graphs"
    assert metrics["eval/shapes/rsum"] > 0
