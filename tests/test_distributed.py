"""Scale-out: two CPU processes with gloo under torchrun, and the pieces they rely on.

DDP's guarantees are tested directly (DESIGN.md, corrections): identical parameters on
every rank, disjoint shards that cover the data, one export written by rank 0 only, and
a repeat with the same seed repeating exactly. The comparison with one process uses a
GroupNorm model and the very sample order the two processes saw, where the two must agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from tests import dist_worker as W
from tests.test_capstone import write_shapes
from tl_course import distributed as tl_distributed
from tl_course.capstone import load_export, predict_images
from tl_course.data import make_loader
from tl_course.distributed import Dist, DistributedError, init_from_env, shard
from tl_course.tensor_loader import TensorLoader
from tl_course.train import evaluate

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


# ------------------------------------------------------------ single-process pieces


def test_shards_are_disjoint_and_cover_everything_without_padding():
    for n in (0, 1, 7, 10, 37):
        for world in (1, 2, 3, 4):
            parts = [list(shard(n, Dist(rank=r, world_size=world))) for r in range(world)]
            flat = sorted(i for p in parts for i in p)
            assert flat == list(range(n))  # each example once, none added
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_init_without_torchrun_is_one_process_and_starts_nothing():
    d = init_from_env(CPU, env={})
    assert (d.rank, d.world_size, d.active, d.is_main) == (0, 1, False, True)
    assert not torch.distributed.is_initialized()
    model = torch.nn.Linear(2, 2)
    assert d.wrap(model) is model  # no DDP around a single process
    t = torch.ones(3)
    assert torch.equal(d.all_reduce_sum(t), torch.ones(3))


def test_init_with_half_a_torchrun_environment_says_what_is_missing():
    with pytest.raises(DistributedError, match="MASTER_ADDR.*torchrun"):
        init_from_env(CPU, env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
                                "MASTER_PORT": "29500"})


def test_init_from_env_takes_the_gpu_of_local_rank_and_nccl(monkeypatch):
    """Second machine of two, its second GPU (RANK 3, LOCAL_RANK 1): cuda:1 with NCCL, and
    the group joined as rank 3 of 4. The GPUs and the process group are stood in for."""
    import torch.distributed as tdist

    calls = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: calls.setdefault("gpu", dev))
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "init_process_group", lambda **kw: calls.setdefault("group", kw))
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node0",
           "MASTER_PORT": "29500"}
    d = init_from_env(env=env)
    assert d.device == torch.device("cuda", 1)
    assert (d.rank, d.world_size, d.local_rank, d.backend) == (3, 4, 1, "nccl")
    assert calls == {"gpu": torch.device("cuda", 1),
                     "group": {"backend": "nccl", "rank": 3, "world_size": 4}}


def test_only_global_rank_0_is_main_on_several_machines():
    """Two machines of two processes: each has a LOCAL_RANK 0, but rank 0 alone prints and
    saves."""
    ranks = [Dist(rank=r, world_size=4, local_rank=r % 2) for r in range(4)]
    assert [d.is_main for d in ranks] == [True, False, False, False]


def test_all_reduce_sum_adds_every_process_tensor_in_place(monkeypatch):
    """Rank 1 of 2: all_reduce_sum leaves the sum of both processes' tensors in the tensor
    it was given and returns it. The collective is stood in for (it applies `op` to this
    process's tensor and the peer's, as gloo and NCCL do)."""
    import torch.distributed as tdist

    peer = torch.tensor([10.0, 20.0, 30.0])
    ops = {tdist.ReduceOp.SUM: torch.add, tdist.ReduceOp.PRODUCT: torch.mul,
           tdist.ReduceOp.MAX: torch.maximum, tdist.ReduceOp.MIN: torch.minimum,
           tdist.ReduceOp.AVG: lambda a, b: (a + b) / 2}

    def all_reduce(t, op=tdist.ReduceOp.SUM, group=None, async_op=False):
        t.copy_(ops[op](t, peer))

    monkeypatch.setattr(tdist, "all_reduce", all_reduce)
    mine = torch.tensor([1.0, 2.0, 3.0])
    out = Dist(rank=1, world_size=2).all_reduce_sum(mine)
    assert out is mine
    assert torch.equal(mine, torch.tensor([11.0, 22.0, 33.0]))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_tensor_loader_gives_a_dataloaders_batches_draw_for_draw(shuffle, drop_last):
    """Same seed, same batches, and the same global random state afterwards, so results
    computed with either loader agree (a missing draw would shift every later number)."""
    ds = TensorDataset(torch.randn(103, 3), torch.arange(103))
    torch.manual_seed(5)
    ours = make_loader(ds, 16, CPU, shuffle=shuffle, drop_last=drop_last)
    assert isinstance(ours, TensorLoader)
    first = next(iter(ours))[1].tolist()  # a partial pass, as a notebook peeks at a batch
    got = [[b[1].tolist() for b in ours] for _ in range(3)]
    after = torch.rand(4)
    torch.manual_seed(5)
    seed = int(torch.randint(0, 2**62, ())) if shuffle else None
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    ref = DataLoader(ds, 16, shuffle=shuffle, generator=gen, drop_last=drop_last)
    ref_first = next(iter(ref))[1].tolist()
    want = [[b[1].tolist() for b in ref] for _ in range(3)]
    assert first == ref_first and got == want
    assert torch.equal(after, torch.rand(4))
    assert len(ours) == len(ref)
    if shuffle:
        assert got[0] != got[1]  # reshuffled every epoch


def test_sharded_loader_uses_a_distributed_sampler_and_reshuffles_each_pass():
    ds = TensorDataset(torch.arange(20.0).unsqueeze(1), torch.arange(20))
    parts = [make_loader(ds, 4, CPU, shuffle=True, seed=1, dist=Dist(rank=r, world_size=2))
             for r in range(2)]
    for p in parts:
        assert isinstance(p.sampler, DistributedSampler)
    passes = [[torch.cat([b[1] for b in p]).tolist() for p in parts] for _ in range(2)]
    for r0, r1 in passes:
        assert sorted(r0 + r1) == list(range(20))  # disjoint halves of everything
    assert passes[0][0] != passes[1][0]  # set_epoch moved the order on
    ordered = [torch.cat([b[1] for b in make_loader(ds, 3, CPU, dist=Dist(rank=r,
                                                                          world_size=3))])
               for r in range(3)]
    assert sorted(torch.cat(ordered).tolist()) == list(range(20))


def test_fit_reads_nothing_back_per_step(monkeypatch):
    """Metrics stay on the device: host reads (.item, float, bool, tolist) made by the
    course's code are counted and must not grow with the number of steps (a GPU would wait
    at every one). torch's own CPU-side reads (Adam's step counter) are not ours to count."""
    import traceback

    from tl_course.train import fit

    package = str(ROOT / "tl_course")
    reads = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            caller = traceback.extract_stack(limit=2)[0].filename
            reads["n"] += caller.startswith(package)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def reads_for(n: int) -> int:
        ds = TensorDataset(torch.randn(n, 4), torch.randint(0, 3, (n,)))
        model = torch.nn.Linear(4, 3)
        loader = make_loader(ds, 4, CPU, shuffle=True, seed=0)
        reads["n"] = 0
        fit(model, loader, epochs=1, device=CPU, progress=False)
        return reads["n"]

    few, many = reads_for(16), reads_for(160)  # 4 steps, then 40 steps
    assert many - few <= 2, f"{many - few} more host reads for 36 more steps"


def test_fit_still_stops_a_diverging_run_with_a_clear_error():
    """The NaN is in the first batch of 100: fit stops at the first check (step 50),
    not at the end of the epoch, and says where."""
    from tl_course.train import CHECK_EVERY, fit

    x = torch.randn(400, 4)
    x[2] = float("nan")
    loader = make_loader(TensorDataset(x, torch.zeros(400, dtype=torch.long)), 4, CPU)
    model = torch.nn.Linear(4, 2)
    steps = {"n": 0}
    model.register_forward_hook(lambda *_: steps.__setitem__("n", steps["n"] + 1))
    with pytest.raises(FloatingPointError,
                       match=f"nan.*epoch 1.*between 1 and {CHECK_EVERY}:.*learning rate"):
        fit(model, loader, epochs=3, device=CPU, progress=False)
    assert steps["n"] == CHECK_EVERY


# ------------------------------------------------------------- two processes, gloo


def _torchrun(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "TL_COURSE_PROFILE": "smoke"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", "2", *args]
    run = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The worker once under torchrun, then the CLI under torchrun on the same folder."""
    tmp = tmp_path_factory.mktemp("ddp")
    folder = write_shapes(tmp / "shapes", n=12)
    _torchrun([str(ROOT / "tests" / "dist_worker.py"), str(tmp), str(folder)], tmp)
    cli = _torchrun(["-m", "tl_course.cli", "train-folder", str(folder), "--out",
                     str(tmp / "cli-export"), "--backbone", "digits-scratch", "--epochs", "2",
                     "--profile", "smoke"], tmp)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return {"tmp": tmp, "folder": folder, "ranks": ranks, "cli": cli}


@pytest.mark.integration
def test_every_rank_ends_with_identical_parameters(two_processes):
    a, b = (r["state"] for r in two_processes["ranks"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.integration
def test_training_shards_are_disjoint_and_cover_the_set_every_epoch(two_processes):
    r0, r1 = (r["order"] for r in two_processes["ranks"])
    for e in range(W.EPOCHS):
        assert sorted(r0[e] + r1[e]) == list(range(W.N_TRAIN))
    assert r0[0] != r0[1]  # set_epoch reshuffled
    assert two_processes["ranks"][0]["passes"] == W.EPOCHS  # one set_epoch per epoch


@pytest.mark.integration
def test_ddp_matches_one_process_on_the_same_global_batches(two_processes):
    """Plain PyTorch, one process, batches = rank 0's batch + rank 1's batch, same order:
    DDP's averaged gradients must give the same parameters, to float precision."""
    train, _ = W.toy_data()
    x, y = train.tensors
    orders = [r["order"] for r in two_processes["ranks"]]
    model = W.toy_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)  # as fit
    losses = []
    for e in range(W.EPOCHS):
        total = 0.0
        for s in range(0, len(orders[0][e]), W.PER_PROCESS):
            idx = orders[0][e][s:s + W.PER_PROCESS] + orders[1][e][s:s + W.PER_PROCESS]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / sum(len(o[e]) for o in orders))
    ddp = two_processes["ranks"][0]
    for k, v in model.state_dict().items():
        assert torch.allclose(ddp["state"][k], v, atol=1e-5), k
    # The loss fit reports is the mean over both processes' examples.
    assert ddp["history"]["train_loss"] == pytest.approx(losses, abs=1e-5)


@pytest.mark.integration
def test_sharded_evaluation_counts_every_example_once(two_processes):
    """37 validation examples on 2 processes: 19 + 18, summed, equals one process."""
    _, val = W.toy_data()
    model = W.toy_model()
    model.load_state_dict(two_processes["ranks"][0]["state"])
    whole = evaluate(model, make_loader(val, 5, CPU), CPU)
    for r in two_processes["ranks"]:
        assert r["val"] == pytest.approx(whole, abs=1e-6)


@pytest.mark.integration
def test_only_rank_0_writes_the_capstone_export(two_processes):
    tmp = two_processes["tmp"]
    assert not (tmp / "capstone-rank1").exists()
    files = sorted(p.name for p in (tmp / "capstone-rank0").iterdir())
    assert files == ["model.json", "model.pt", "split.json", "top_losses.png"]
    m0, m1 = (json.loads((tmp / f"capstone-metrics-rank{r}.json").read_text())
              for r in range(2))
    assert m0["confusion_matrix"] == m1["confusion_matrix"]  # all-reduced, on every rank
    split = json.loads((tmp / "capstone-rank0" / "split.json").read_text())
    assert m0["val_images"] == sum(map(sum, m0["confusion_matrix"])) == len(split["valid"])


@pytest.mark.integration
def test_the_cli_under_torchrun_repeats_the_same_seed_exactly(two_processes):
    """Worker and CLI: two launches, same folder and seed: the same weights, bit for bit,
    and one export in the single-process format that predicts."""
    tmp = two_processes["tmp"]
    out = tmp / "cli-export"
    assert "global batch" in two_processes["cli"].stdout
    assert two_processes["cli"].stdout.count("validation accuracy") == 1  # rank 0 only
    a = torch.load(out / "model.pt", weights_only=True)
    b = torch.load(tmp / "capstone-rank0" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    meta = json.loads((out / "model.json").read_text())
    assert meta["processes"] == 2
    exported = load_export(out, CPU)
    rows = predict_images(exported, sorted((two_processes["folder"] / "circles").iterdir()))
    assert len(rows) == 12 and all(r["top"][0][0] in exported.classes for r in rows)


def test_probe_mode_under_torchrun_is_refused_with_a_reason():
    from tl_course.capstone import train_folder

    with pytest.raises(DistributedError, match="probe.*without torchrun"):
        train_folder("unused", "unused", mode="probe", dist=Dist(rank=0, world_size=2))


# ------------------------------------------- the collectives and GPUs, stood in for


TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "node0",
                "MASTER_PORT": "29500"}


def _fake_group(monkeypatch, initialized=False):
    """Stand in for the process group: record what joins, meets and leaves it, in order."""
    import torch.distributed as tdist

    calls = []
    monkeypatch.setattr(tdist, "is_initialized", lambda: initialized)
    monkeypatch.setattr(tdist, "init_process_group", lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(tdist, "barrier", lambda *a, **k: calls.append(("barrier",)))
    monkeypatch.setattr(tdist, "destroy_process_group",
                        lambda *a, **k: calls.append(("destroy",)))
    return calls


def test_gather_objects_returns_every_process_object_in_rank_order(monkeypatch):
    """Rank 1 of 3: the list all_gather_object fills, one slot per rank, this process's
    object in its own slot; a single process gets [obj] and calls no collective."""
    import torch.distributed as tdist

    others = {0: {"acc": 0.5}, 2: {"acc": 0.75}}

    def all_gather_object(object_list, obj, group=None):
        assert len(object_list) == 3  # as torch: one slot per rank, given by the caller
        for r in range(3):
            object_list[r] = obj if r == 1 else others[r]

    monkeypatch.setattr(tdist, "all_gather_object", all_gather_object)
    mine = {"acc": 0.25}
    got = tl_distributed.gather_objects(mine, Dist(rank=1, world_size=3))
    assert got == [{"acc": 0.5}, {"acc": 0.25}, {"acc": 0.75}]

    def no_collective(*a, **k):
        raise AssertionError("a single process has no one to gather from")

    monkeypatch.setattr(tdist, "all_gather_object", no_collective)
    assert tl_distributed.gather_objects(mine, Dist()) == [mine]


def test_launched_by_torchrun_reads_os_environ_unless_given_an_env(monkeypatch):
    """WORLD_SIZE > 1 in the process environment means torchrun; an explicit env wins."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert tl_distributed.launched_by_torchrun()
    assert not tl_distributed.launched_by_torchrun({})
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not tl_distributed.launched_by_torchrun()
    monkeypatch.delenv("WORLD_SIZE")
    assert not tl_distributed.launched_by_torchrun()
    assert tl_distributed.launched_by_torchrun({"WORLD_SIZE": "3"})


def test_init_from_env_without_torchrun_keeps_the_device_asked_for(monkeypatch):
    """One process: the device given, else get_device()'s pick; an explicit empty env is
    obeyed even when the process environment says torchrun."""
    import tl_course.device

    picked = torch.device("meta")  # not the CPU, so a lost argument shows
    monkeypatch.setattr(tl_course.device, "get_device", lambda *a, **k: picked)
    for k, v in TORCHRUN_ENV.items():
        monkeypatch.setenv(k, v)
    calls = _fake_group(monkeypatch)
    assert init_from_env(CPU, env={}) == Dist(device=CPU)
    assert init_from_env(env={}) == Dist(device=picked)
    assert calls == []  # no process group for one process


@pytest.mark.parametrize("source", ["env", "os.environ"])
def test_init_from_env_on_cpus_joins_with_gloo(monkeypatch, source):
    """No GPU: rank 1 of 2 stays on the CPU and joins the group with gloo, from an env
    mapping or from the process environment."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    calls = _fake_group(monkeypatch)
    if source == "env":
        d = init_from_env(env=TORCHRUN_ENV)
    else:
        for k, v in TORCHRUN_ENV.items():
            monkeypatch.setenv(k, v)
        d = init_from_env()
    assert d == Dist(rank=1, world_size=2, local_rank=1, device=CPU, backend="gloo")
    assert calls == [("init", {"backend": "gloo", "rank": 1, "world_size": 2})]


def test_init_from_env_refuses_a_local_rank_without_its_gpu(monkeypatch):
    """Two GPUs are cuda:0 and cuda:1: LOCAL_RANK 2 has none and is told so."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: None)
    calls = _fake_group(monkeypatch)
    env = {**TORCHRUN_ENV, "RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "2"}
    with pytest.raises(DistributedError, match="LOCAL_RANK 2 but only 2 GPU"):
        init_from_env(env=env)
    assert calls == []


def test_shutdown_meets_at_a_barrier_then_leaves_only_a_group_it_is_in(monkeypatch):
    """Several processes: barrier, then destroy, in that order; a single process, or a
    group never joined, is left alone."""
    calls = _fake_group(monkeypatch, initialized=True)
    tl_distributed.shutdown(Dist())
    assert calls == []
    tl_distributed.shutdown(Dist(rank=1, world_size=2))
    assert calls == [("barrier",), ("destroy",)]
    calls = _fake_group(monkeypatch, initialized=False)
    tl_distributed.shutdown(Dist(rank=1, world_size=2))
    assert calls == []


def test_describe_says_how_many_processes_which_backend_and_device():
    assert Dist().describe() == "1 process on cpu"
    line = Dist(rank=1, world_size=2, backend="gloo").describe()
    assert "2 processes" in line and "gloo" in line and "rank 1" in line and "cpu" in line
    assert "\n" not in line


class _FakeDDP(torch.nn.Module):
    """Stands in for DistributedDataParallel (which needs a process group): keeps what it
    was given, with the real constructor's argument names."""

    def __init__(self, module, device_ids=None, output_device=None, **kwargs):
        super().__init__()
        self.module, self.device_ids = module, device_ids


def _bn_model():
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_wrap_on_cpus_is_ddp_around_the_model_itself(monkeypatch):
    """gloo has no SyncBatchNorm: on CPUs the very model goes into DDP, BatchNorm as it is,
    with no device_ids (DDP's rule for CPU modules)."""
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", _FakeDDP)
    model = _bn_model()
    wrapped = Dist(rank=1, world_size=2, device=CPU, backend="gloo").wrap(model)
    assert isinstance(wrapped, _FakeDDP)
    assert wrapped.module is model
    assert type(model[1]) is torch.nn.BatchNorm1d
    assert wrapped.device_ids is None


def test_wrap_on_a_gpu_syncs_batchnorm_and_pins_ddp_to_that_gpu(monkeypatch):
    """On cuda:1, BatchNorm becomes SyncBatchNorm (statistics over the global batch, same
    weights) and DDP gets device_ids=[1]."""
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", _FakeDDP)
    model = _bn_model()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    gpu = torch.device("cuda", 1)
    wrapped = Dist(rank=1, world_size=2, local_rank=1, device=gpu, backend="nccl").wrap(model)
    assert isinstance(wrapped, _FakeDDP)
    assert wrapped.device_ids == [1]
    inner = wrapped.module
    assert isinstance(inner[0], torch.nn.Linear) and inner[0].weight is model[0].weight
    assert type(inner[1]) is torch.nn.SyncBatchNorm
    assert torch.equal(inner[1].weight, torch.tensor([1.0, 2.0, 3.0, 4.0]))
