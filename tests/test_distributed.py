"""Data-parallel training, sharded evaluation and prediction under torchrun (CPU, gloo, 2 processes).

The slow tests launch the real ``danet`` command line with ``python -m torch.distributed.run``
(torchrun) and compare with one plain process: the same losses and weights after a few steps
(2 processes x batch 1 against 1 process x batch 2), the same confusion matrix, each predicted
image written once, the same attention statistics.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import danet
from conftest import make_camvid_like, make_tiny_model, save_tiny
from danet.runtime import distributed
from danet.data.camvid import SegmentationAugment, SegmentationDataset, list_pairs
from danet.analysis.attention_stats import (ABLATIONS, StatsPart, compute_attention_stats, finish_attention_stats,
                                  image_attention_stats, merge_parts)
from danet.errors import InputError
from danet.jobs.evaluate import evaluate_loaded
from danet.jobs.predict import PredictReport, merge_reports
from danet.jobs.train import EpochSeeded, TrainConfig, build, train
from danet.models import DANet


# ---- one process: the helpers are exact no-ops, the sharding rule holds ----------------------------
@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shard_gives_each_item_to_exactly_one_rank(world):
    items = [f"image{i}" for i in range(10)]
    shares = [distributed.shard(items, r, world) for r in range(world)]
    assert sorted(sum(shares, [])) == sorted(items)
    assert len({len(s) for s in shares} | {len(shares[0]) - 1}) <= 2      # lengths differ by at most one
    assert shares == [distributed.shard(items, r, world) for r in range(world)]   # deterministic


def test_shard_refuses_a_rank_outside_the_world():
    with pytest.raises(InputError, match="rank 2"):
        distributed.shard([1, 2, 3], 2, 2)


def test_env_ranks_read_torchrun_variables(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.env_ranks() == (0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.env_ranks() == (3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(InputError, match="WORLD_SIZE 4"):
        distributed.env_ranks()


def test_outside_torchrun_every_helper_is_the_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.process_group("cpu") as ctx:
        assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.device.type) == (0, 1, True, "cpu")
        confusion = np.arange(9, dtype=np.int64).reshape(3, 3)
        assert np.array_equal(distributed.sum_array(confusion), confusion)
        assert distributed.all_gather({"a": 1}) == [{"a": 1}]
        assert distributed.broadcast("x") == "x"
        assert float(distributed.mean_over_ranks(torch.tensor(2.5))) == 2.5
        distributed.barrier()
    assert not torch.distributed.is_initialized()


def test_augmentation_depends_on_seed_epoch_and_index_not_on_order(tmp_path):
    data = make_camvid_like(tmp_path / "data")
    dataset = EpochSeeded(SegmentationDataset(data, "train", SegmentationAugment((32, 48), (0.8, 1.2))), seed=0)
    forward = [dataset[i][0] for i in range(4)]
    backward = [dataset[i][0] for i in reversed(range(4))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    dataset.epoch = 1
    assert not all(torch.equal(a, dataset[i][0]) for i, a in enumerate(forward))


@pytest.mark.parametrize("options, fragment", [
    ({"sync_bn": True}, "--sync-bn needs CUDA"),
    ({"sync_bn": True, "freeze_bn": True}, "exclude each other"),
])
def test_sync_bn_refusals_are_one_line(tmp_path, options, fragment):
    cfg = TrainConfig(data=str(tmp_path / "absent"), out=str(tmp_path / "run"), device="cpu", **options)
    with pytest.raises(InputError, match=fragment) as error:
        train(cfg, log=lambda *_: None)
    assert "\n" not in str(error.value)


def test_merged_reports_keep_the_image_order():
    images = [Path(f"/x/{n}.png") for n in "abcde"]
    names = list("abcde")
    first = PredictReport(Path("out"), images, "cpu", processed=["a", "c"], skipped=["e"])
    second = PredictReport(Path("out"), images, "cpu", processed=["d"], failed=[(images[1], "b: broken")])
    merged = merge_reports(first, [first, second], names)
    assert (merged.processed, merged.skipped, merged.failed) == (["a", "c", "d"], ["e"], [(images[1], "b: broken")])


# ---- two gloo processes ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _helpers_worker(rank: int, port: int, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with distributed.process_group("cpu") as ctx:
        big = np.full((2, 2), 2 ** 40 + rank, dtype=np.int64)        # beyond float32's exact integers
        summed = distributed.sum_array(big)
        results[rank] = {"ctx": (ctx.rank, ctx.world_size, ctx.is_main), "sum": summed.tolist(),
                         "dtype": str(summed.dtype), "gather": distributed.all_gather(rank * 10),
                         "broadcast": distributed.broadcast(f"from {rank}"),
                         "mean": float(distributed.mean_over_ranks(torch.tensor(float(rank)))),
                         "shard": distributed.shard(list(range(5)))}
        distributed.barrier()


@pytest.mark.slow
def test_helpers_across_two_gloo_processes(monkeypatch):
    # spawn re-runs ``__main__`` in each child; AppTest runs earlier in the session leave the app
    # script there, so give the children a plain module instead
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    results = mp.Manager().dict()
    mp.spawn(_helpers_worker, args=(free_port(), results), nprocs=2, join=True)
    zero, one = results[0], results[1]
    assert zero["ctx"] == (0, 2, True) and one["ctx"] == (1, 2, False)
    assert zero["sum"] == one["sum"] == [[2 ** 41 + 1] * 2] * 2 and zero["dtype"] == "int64"
    assert zero["gather"] == one["gather"] == [0, 10]
    assert zero["broadcast"] == one["broadcast"] == "from 0"
    assert zero["mean"] == one["mean"] == 0.5
    assert (zero["shard"], one["shard"]) == ([0, 2, 4], [1, 3])


def torchrun(*args, nproc: int = 2, timeout: int = 120) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m danet.cli ARGS`` on the CPU; fails the test on a non-zero exit."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "--max_restarts=0",
               "-m", "danet.cli", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


TRAIN = dict(backbone="resnet18", head_channels=16, imagenet=False, lr=3e-3, crop=(48, 64), scale=(1.0, 1.0),
             class_weights="none", dropout=0.0, freeze_bn=True, threads=1, device="cpu")


def train_args(data, out, epochs, batch):
    return ["train", "--data", data, "--out", out, "--backbone", "resnet18", "--head-channels", 16, "--no-imagenet",
            "--lr", 3e-3, "--crop", "48,64", "--scale", "1,1", "--class-weights", "none", "--dropout", 0,
            "--freeze-bn", "--threads", 1, "--device", "cpu", "--epochs", epochs, "--batch-size", batch]


def image_by_image(forward):
    """``DANet.forward`` run on each image of the batch alone and concatenated: the same function
    (BN frozen, no dropout, nothing mixes images), computed with the batch-1 kernels each process
    of a data-parallel run uses."""
    def run(self, x):
        outputs = [forward(self, x[i:i + 1].clone()) for i in range(x.shape[0])]
        return tuple(torch.cat(parts) for parts in zip(*outputs))
    return run


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_global_batch_and_resume(tmp_path, monkeypatch):
    """2 processes x batch 1 under torchrun end with the same weights and optimizer state, bit for
    bit, as 1 process x batch 2 (the images are full frames, so each holds as many labelled pixels;
    BN frozen, no dropout), after one epoch and a resumed second.

    Why bit for bit, and why the one-process run computes its batch image by image: a batch-2
    forward sums in another order than two batch-1 forwards (outputs agree to about 3e-8). That
    alone would be harmless, but ReLU's derivative jumps at 0: here one pre-activation of layer4
    is 3.4e-8 (its summands are about 1) computed one way and exactly 0 the other, so ReLU passes
    that unit's gradient in one run and blocks it in the other, and the parameter gradients differ
    by up to 1.3% of a layer's largest gradient, not by rounding. AdamW then moves each weight by
    about lr_t per step whatever its gradient's size (m/sqrt(v) is 1 at the first step), so where
    that flips a gradient's sign the weights part by up to 2 * sum(lr_t): the only elementwise
    bound batched and image-by-image training have is twice the update itself (measured 1.3e-4
    against a 3e-4 update), which no tolerance can test. Computed image by image, each image's
    gradient is the same sums in the same order as in its own process; the one-process loss mean
    over 2n pixels scales it by 1/(2n) where DDP scales by 1/n and then halves, both exact powers
    of two apart, and a sum of two terms does not depend on its order. So the two runs must agree
    exactly on any machine (the batched path is PyTorch's, not the trainer's, and is not what this
    test is about): any difference is the trainer's (sampler order, gradient averaging, the lr
    schedule, resume, optimizer state). The logged loss is a float32 mean over 2 x 2976 pixels
    summed in another order than DDP's mean of two means: rounding, far below the 1e-5 asked."""
    data = make_camvid_like(tmp_path / "data", n_train=4, n_val=3)
    one = tmp_path / "one"
    with monkeypatch.context() as patch:
        patch.setattr(DANet, "forward", image_by_image(DANet.forward))
        for epochs in (1, 2):                               # the second call resumes from last.pt
            train(TrainConfig(data=str(data), out=str(one), epochs=epochs, batch_size=2, **TRAIN),
                  log=lambda *_: None)
    two = tmp_path / "two"
    first = torchrun(*train_args(data, two, 1, 1))
    second = torchrun(*train_args(data, two, 2, 1))
    assert first.stdout.count("effective batch 2") == 1          # logged by rank 0 only
    assert "2 process(es) on cpu: batch 1 per process" in first.stdout
    assert second.stdout.count("resumed from") == 1 and "epoch 1, step 2" in second.stdout

    log_one = [json.loads(line) for line in (one / "log.jsonl").read_text().splitlines()]
    log_two = [json.loads(line) for line in (two / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_two] == [r["step"] for r in log_one] == [2, 4]
    for a, b in zip(log_one, log_two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["val_miou"] == a["val_miou"]
    state_one = torch.load(one / "last.pt", weights_only=True)
    state_two = torch.load(two / "last.pt", weights_only=True)
    weights_one, weights_two = state_one["model"], state_two["model"]
    assert weights_one.keys() == weights_two.keys()
    for key, value in weights_one.items():
        torch.testing.assert_close(weights_two[key], value, rtol=0, atol=0, msg=key)
    moments_one, moments_two = state_one["optimizer"]["state"], state_two["optimizer"]["state"]
    assert moments_one.keys() == moments_two.keys()
    for index, moments in moments_one.items():
        for name, value in moments.items():
            torch.testing.assert_close(moments_two[index][name], value, rtol=0, atol=0, msg=f"{index}.{name}")
    torch.manual_seed(0)                                             # train() seeds so before building
    initial = build(TrainConfig(data=str(data), **TRAIN)).state_dict()
    moved = max(float((weights_one[k].float() - v.float()).abs().max()) for k, v in initial.items())
    assert 1e-4 < moved < 1e-2                                       # the steps did move the weights
    exported = danet.load(two / "best.safetensors").meta.extra["training"]
    assert (exported["processes"], exported["effective_batch_size"]) == (2, 2)


@pytest.fixture
def scored_checkpoint(tmp_path):
    return save_tiny(make_tiny_model(11), tmp_path / "tiny.safetensors")


@pytest.mark.slow
def test_sharded_evaluate_sums_to_the_single_process_confusion(tmp_path, scored_checkpoint):
    data = make_camvid_like(tmp_path / "data", n_train=1, n_val=5)   # odd: shards of 3 and 2 images
    alone = evaluate_loaded(danet.load(scored_checkpoint, device="cpu"), data, "val")
    scores = tmp_path / "scores.json"
    result = torchrun("evaluate", "--data", data, "--checkpoint", scored_checkpoint, "--device", "cpu",
                      "--json", scores)
    assert result.stdout.count("mIoU") == 1                          # rank 0 prints, once
    merged = json.loads(scores.read_text())
    assert merged["images"] == 5
    assert np.array_equal(np.array(merged["confusion"]), alone["confusion"])
    assert merged["miou"] == alone["miou"]


@pytest.mark.slow
def test_sharded_predict_writes_each_image_once(tmp_path, scored_checkpoint):
    data = make_camvid_like(tmp_path / "data", n_train=5, n_val=1)
    images = sorted((data / "train").iterdir())
    out = tmp_path / "pred"
    result = torchrun("predict", data / "train", "--out", out, "--checkpoint", scored_checkpoint, "--device", "cpu")
    assert result.stdout.count("5 predicted, 0 already done, 0 failed") == 1
    manifest = json.loads((out / "manifest.json").read_text())
    names = [image.stem for image in images]
    assert manifest["processed"] == names                           # each once, in the image order
    ranks = [json.loads((out / name / "prediction.json").read_text())["rank"] for name in names]
    assert ranks == [i % 2 for i in range(5)]                        # by the shard rule: one rank each
    assert (out / "legend.png").is_file()
    again = torchrun("predict", data / "train", "--out", out, "--checkpoint", scored_checkpoint, "--device", "cpu")
    assert again.stdout.count("0 predicted, 5 already done, 0 failed") == 1


# ---- attention-stats: shards merge into exactly one process's result ---------------------------------
def test_attention_stats_parts_of_two_shards_merge_to_the_whole(tmp_path):
    """The per-image pass keyed by the global index, merged, gives the one-pass result (the shards
    are computed in reverse order, so nothing depends on the order the parts arrive in)."""
    data = make_camvid_like(tmp_path / "data", n_train=1, n_val=5)
    pairs = list_pairs(data, "val")
    loaded = danet.load(save_tiny(make_tiny_model(11), tmp_path / "tiny.safetensors"), device="cpu")
    model, meta = loaded.model, loaded.meta
    settings = dict(points_per_image=4, seed=2, ignore_index=11)
    whole = compute_attention_stats(model, meta, pairs, measures=False, **settings)
    shards = []
    for rank in (1, 0):
        part = StatsPart.empty(ABLATIONS, 11)
        for index in distributed.shard(range(len(pairs)), rank, 2):
            part.add(image_attention_stats(model, meta, index, *pairs[index], measures=False, **settings))
        shards.append(part)
    merged = finish_attention_stats(merge_parts(shards), model, meta, pairs, measures=False, **settings)
    assert len(whole.query_rows()) == 20
    for name in ("query_rows", "summary", "ablation", "per_image", "overall", "settings"):
        expected = whole.query_rows() if name == "query_rows" else getattr(whole, name)
        got = merged.query_rows() if name == "query_rows" else getattr(merged, name)
        _numbers_close(expected, got, name, rel=0.0)               # exactly: the same numbers, in the same order
    with pytest.raises(ValueError, match="counted twice"):
        merge_parts([shards[0], shards[0]])
    with pytest.raises(ValueError, match="expected 5"):
        finish_attention_stats(shards[0], model, meta, pairs, measures=False, **settings)


def _numbers_close(a, b, path="summary", rel=1e-9):
    """``a`` and ``b`` (JSON-like values) equal, floats to ``rel`` (NaN equals NaN)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _numbers_close(a[key], b[key], f"{path}.{key}", rel)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _numbers_close(x, y, f"{path}[{i}]", rel)
    elif isinstance(a, float) or isinstance(b, float):
        assert b == pytest.approx(a, rel=rel, abs=1e-12 if rel else 0.0, nan_ok=True), path
    else:
        assert a == b, path


@pytest.mark.slow
def test_sharded_attention_stats_equal_one_process(tmp_path, scored_checkpoint):
    from danet.jobs.attention_stats import FILES, write_attention_stats

    data = make_camvid_like(tmp_path / "data", n_train=1, n_val=5)   # shards of 3 and 2 images
    options = dict(points_per_image=6, seed=1, ignore_index=11)
    alone = tmp_path / "alone"
    write_attention_stats(danet.load(scored_checkpoint, device="cpu"), data, alone, **options)
    two = tmp_path / "two"
    result = torchrun("attention-stats", "--data", data, "--out", two, "--checkpoint", scored_checkpoint,
                      "--device", "cpu", "--points-per-image", 6, "--seed", 1, "--ignore-index", 11, timeout=300)
    assert result.stdout.count("PAM attention over 5 val images") == 1        # rank 0 prints, once
    assert result.stdout.count(f"-> {two}") == 1
    for name in FILES[:-1]:                                                  # the CSVs, byte for byte
        assert (two / name).read_text() == (alone / name).read_text(), name
    assert len((two / "queries.csv").read_text().splitlines()) == 1 + 5 * 6
    one_summary, two_summary = (json.loads((folder / "summary.json").read_text()) for folder in (alone, two))
    one_summary.pop("seconds"), two_summary.pop("seconds")
    _numbers_close(one_summary, two_summary)
    assert two_summary["images"] == 5 and [row["image"] for row in two_summary["per_image"]] == \
        [f"f{i}.png" for i in range(5)]
    assert (two / "attention_stats.png").is_file()


@pytest.mark.slow
def test_model_warnings_are_printed_by_rank_zero_only(tmp_path):
    model = make_tiny_model(11)
    with torch.no_grad():
        model.head.cam_classifier[1].bias[0] = float("nan")             # a warning at load, not a refusal
    checkpoint = save_tiny(model, tmp_path / "nan.safetensors")
    data = make_camvid_like(tmp_path / "data", n_train=1, n_val=2)
    result = torchrun("evaluate", "--data", data, "--checkpoint", checkpoint, "--device", "cpu")
    assert (result.stdout + result.stderr).count("contain NaN or Inf values") == 1
