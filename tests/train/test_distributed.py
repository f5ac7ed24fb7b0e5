"""Data-parallel fits: two gloo ranks on the CPU under torchrun against one process.

The fits use a deterministic configuration (black background, unjittered samples along
the rays) so that the only randomness is the ray sampler's, which every rank shares, and
the occupancy update's, which rank 0 alone draws. A 2-rank fit must then reproduce a
1-process fit with the same global batch up to the order of float32 sums. Measured:
3e-8 at most after 4 steps (weights of magnitude up to 1). The tolerance, 1e-5, is two
orders above that and three below what a wrong reduction moves: each Adam step moves a
weight by about the learning rate (1e-2 here), so a missing all-reduce (each rank
following its own half batch) or a rank dropping out of one shows at the 1e-3 level.

One module-scoped scenario, two torchrun launches: a fit held at step 2 and stopped by a
SIGTERM to torchrun, then resumed to step 4 by both ranks, each dumping what it holds
(tests/train/ddp_worker.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from handnerf import interrupts
from handnerf.errors import ConfigError
from handnerf.train.checkpoint import LATEST, load_checkpoint
from handnerf.train.distributed import DataParallel, Ranks, environment_ranks
from handnerf.train.fit_job import run_fit
from handnerf.train.rays import RaySampler, ViewStack

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
STEPS, STOP_AT = 4, 2
#: A 2-rank fit and a 1-process one must agree to this (see the module docstring).
WEIGHT_TOLERANCE = 1e-5

DETERMINISTIC = [
    "train.background=black",
    "model.sampler.stratified=false",
    f"train.steps={STEPS}",
    "train.occupancy_every=2",  # updates at steps 0 and 2: after the weights moved
    "train.checkpoint_every=100",  # only the stop and the end save
    "train.log_every=2",
]


def torchrun(nproc: int, *args: str) -> list[str]:
    """A single-node torchrun command line whose rendezvous listens on 127.0.0.1 only."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc_per_node={nproc}",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:0",
        f"--rdzv-id={uuid.uuid4().hex}",
        *args,
    ]


def child_pids(pid: int) -> list[int]:
    """PIDs of the live children of ``pid`` (torchrun's workers), read from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields: state, ppid, ...
            children.append(int(stat.parent.name))
    return children


def stop(proc: subprocess.Popen[Any], workers: list[int]) -> None:
    """Stop torchrun and its workers by PID if they still run (a failed test)."""
    if proc.poll() is None:
        workers += child_pids(proc.pid)
        proc.kill()
        proc.wait(timeout=60)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_env(trace: Path, hold: str | None = None) -> dict[str, str]:
    env = os.environ | {
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",  # two ranks on two cores
        "GLOO_SOCKET_IFNAME": "lo",  # gloo's sockets on the loopback interface
        interrupts.PROGRESS_ENV: str(trace),
    }
    env.pop(interrupts.HOLD_ENV, None)
    if hold is not None:
        env[interrupts.HOLD_ENV] = hold
    return env


@pytest.fixture(scope="module")
def overrides(small_fit: list[str]) -> list[str]:
    return [*small_fit, *DETERMINISTIC]


@pytest.fixture(scope="module")
def fit_args(tiny_capture: Path, overrides: list[str]) -> list[str]:
    return ["--data", str(tiny_capture), "--no-progress", *overrides]


@pytest.fixture(scope="module")
def one_process(
    tiny_capture: Path, overrides: list[str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The checkpoint of the same fit in one process, uninterrupted."""
    out = tmp_path_factory.mktemp("one_process") / "run"
    run_fit(tiny_capture, out, overrides=overrides, progress=False)
    return load_checkpoint(out / "checkpoints" / LATEST)


@pytest.fixture(scope="module")
def stopped(fit_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-rank fit held at step 2 by both ranks, then sent SIGTERM through torchrun."""
    tmp = tmp_path_factory.mktemp("ddp")
    out, trace = tmp / "run", tmp / "trace_stop"
    cmd = torchrun(2, "-m", "handnerf", "fit", "--out", str(out), *fit_args)
    proc = subprocess.Popen(
        cmd,
        cwd=tmp,
        env=run_env(trace, hold=f"fit.step={STOP_AT}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    workers: list[int] = []
    try:
        # Both ranks hold at the point (each process once); wait until both are there.
        while (trace.read_text() if trace.exists() else "").count("hold fit.step") < 2:
            if proc.poll() is not None:
                output, _ = proc.communicate()
                pytest.fail(f"torchrun ended before step {STOP_AT}: {output[-3000:]}")
            threading.Event().wait(0.05)
        workers = child_pids(proc.pid)
        proc.send_signal(signal.SIGTERM)  # torchrun passes it on to every worker
        output, _ = proc.communicate(timeout=120)
    finally:
        stop(proc, workers)
    return {
        "out": out,
        "trace": trace.read_text().splitlines(),
        "output": output,
        "tmp": tmp,
        "checkpoint": load_checkpoint(out / "checkpoints" / LATEST),  # the resume replaces it
    }


@pytest.fixture(scope="module")
def resumed(stopped: dict[str, Any], fit_args: list[str]) -> dict[str, Any]:
    """The stopped fit resumed to the end by two ranks, each dumping its state."""
    tmp, out = stopped["tmp"], stopped["out"]
    trace, dumps = tmp / "trace_resume", tmp / "dumps"
    dumps.mkdir()
    cmd = torchrun(2, str(WORKER), str(dumps), "fit", "--out", str(out), "--resume", *fit_args)
    proc = subprocess.Popen(
        cmd, cwd=tmp, env=run_env(trace), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        output, _ = proc.communicate(timeout=300)
    finally:
        stop(proc, [])
    assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
    ranks = [torch.load(dumps / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return {"ranks": ranks, "trace": trace.read_text().splitlines(), "out": out}


def test_sigterm_to_torchrun_stops_both_ranks_and_rank_0_alone_saves(
    stopped: dict[str, Any],
) -> None:
    trace = stopped["trace"]
    # Both workers stopped gracefully (130), after agreeing on the step to stop at.
    assert trace.count("exit 130") == 2, stopped["output"][-3000:]
    assert trace.count(f"hold fit.step {STOP_AT}") == 2
    assert not any(line.startswith(f"fit.step {STOP_AT + 1}") for line in trace)
    # One checkpoint writer, one write: the stop's.
    assert trace.count(f"write {LATEST}") == 1
    assert trace.count("write config.yaml") == 1 and trace.count("write run.json") == 1
    assert stopped["checkpoint"]["step"] == STOP_AT
    leftovers = [p for p in stopped["out"].rglob(".*") if ".tmp" in p.name]
    assert not leftovers


def test_resumed_two_rank_fit_matches_the_one_process_fit(
    resumed: dict[str, Any], one_process: dict[str, Any], stopped: dict[str, Any]
) -> None:
    rank0, rank1 = resumed["ranks"]
    assert rank0["status"] == rank1["status"] == 0
    assert rank0["step"] == rank1["step"] == STEPS and rank0["world_size"] == 2
    final = load_checkpoint(resumed["out"] / "checkpoints" / LATEST)
    assert final["step"] == STEPS
    at_stop = stopped["checkpoint"]
    for name, reference in one_process["model"].items():
        mine, theirs = rank0["model"][name], rank1["model"][name]
        # The ranks applied the same averaged gradients: bit for bit the same weights.
        assert torch.equal(mine, theirs), name
        assert torch.equal(final["model"][name], mine), name
        if reference.dtype.is_floating_point:
            diff = float((mine - reference).abs().max()) if mine.numel() else 0.0
            assert diff <= WEIGHT_TOLERANCE, f"{name}: 2 ranks vs 1 process differ by {diff}"
    # The comparison is not vacuous: the two resumed steps moved the hash grid far more
    # than the tolerance.
    grid = "field.encoding.params"
    moved = float((final["model"][grid] - at_stop["model"][grid]).abs().max())
    assert moved > 100 * WEIGHT_TOLERANCE


def test_occupancy_grids_are_equal_on_both_ranks(
    resumed: dict[str, Any], one_process: dict[str, Any]
) -> None:
    rank0, rank1 = resumed["ranks"]
    for key in ("occupancy.estimator.occs", "occupancy.estimator.binaries"):
        assert torch.equal(rank0["model"][key], rank1["model"][key]), key
    # ... and the grid is the one-process fit's (rank 0 drew the same cells).
    binaries = rank0["model"]["occupancy.estimator.binaries"]
    assert torch.equal(binaries, one_process["model"]["occupancy.estimator.binaries"])
    # The updates did change it (from the mesh-seeded start), so equality means sharing.
    assert bool(binaries.any())


def test_rank_0_alone_logs_and_writes(resumed: dict[str, Any]) -> None:
    trace = resumed["trace"]
    assert trace.count(f"write {LATEST}") == 1  # the end's save, by one writer
    assert trace.count("fit.final_validation 4") == 1
    lines = (resumed["out"] / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line]
    steps = [(r["step"], r.get("final", False)) for r in records]
    assert steps == [(2, False), (4, False), (4, True)]  # once each: one logger


def average_in_group(rank: int, store: str, out: str) -> None:
    """A spawned gloo rank: average three gradients (one present on both ranks, one on
    rank 1 only, one on neither) and save what this rank ends up with."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        both, one, none = (torch.zeros(3, requires_grad=True) for _ in range(3))
        both.grad = torch.tensor([1.0, 2.0, 3.0]) * (rank + 1)  # rank 0: x, rank 1: 2x
        if rank == 1:
            one.grad = torch.tensor([4.0, 4.0, 4.0])
        parallel = DataParallel(Ranks(rank=rank, world_size=2), torch.device("cpu"))
        parallel.average_gradients([both, one, none])
        assert none.grad is None
        torch.save({"both": both.grad, "one": one.grad}, Path(out) / f"grads{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gradients_are_averaged_and_absent_ones_stay_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.multiprocessing as mp

    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # the spawned ranks inherit it
    context = mp.start_processes(
        average_in_group,
        args=(str(tmp_path / "store"), str(tmp_path)),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    try:
        # join() returns as each rank ends (True once all have); bounded, not timed.
        finished = any(context.join(timeout=300) for _ in range(3))
        assert finished, "the ranks did not finish"
    finally:
        for process in context.processes:  # a failed rank leaves the other waiting
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
                process.join(timeout=60)
    for rank in range(2):
        grads = torch.load(tmp_path / f"grads{rank}.pt", weights_only=True)
        assert torch.equal(grads["both"], torch.tensor([1.5, 3.0, 4.5]))
        assert torch.equal(grads["one"], torch.tensor([2.0, 2.0, 2.0]))  # (0 + 4) / 2


# ---------------------------------------------------------------------- without processes


def test_ray_shares_of_two_ranks_make_up_the_one_process_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    views = ViewStack(
        images=torch.rand(3, 10, 12, 3, generator=gen),
        masks=torch.rand(3, 10, 12, generator=gen) > 0.6,
        K=torch.tensor([[20.0, 0, 6], [0, 20.0, 5], [0, 0, 1]]).expand(3, 3, 3).clone(),
        R=torch.eye(3).expand(3, 3, 3).clone(),
        t=torch.tensor([[0.0, 0, 0.5], [0.1, 0, 0.5], [0.0, 0.1, 0.5]]),
        frame_ids=torch.tensor([0, 1, 2]),
        camera_ids=torch.tensor([0, 1, 2]),
    )
    whole = RaySampler(views, seed=5, jitter=True)
    shares = [RaySampler(views, seed=5, jitter=True, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):  # successive steps stay in step
        batch = whole.sample(64)
        parts = [s.sample(64) for s in shares]
        assert [len(p) for p in parts] == [32, 32]
        for r, part in enumerate(parts):
            assert torch.equal(part.rgb, batch.rgb[r::2])
            assert torch.equal(part.mask, batch.mask[r::2])
            assert torch.equal(part.rays.origins, batch.rays.origins[r::2])
            assert torch.equal(part.rays.directions, batch.rays.directions[r::2])
            assert torch.equal(part.rays.frame_ids, batch.rays.frame_ids[r::2])
        patches = [s.sample_patches(4, 3)[0] for s in shares]
        whole_patches = whole.sample_patches(4, 3)[0].rgb.reshape(4, 9, 3)
        for r, part in enumerate(patches):
            assert torch.equal(part.rgb.reshape(2, 9, 3), whole_patches[r::2])
    assert torch.equal(shares[1].generator.get_state(), whole.generator.get_state())


@pytest.mark.parametrize(
    ("rays", "patches", "key"),
    [(255, 0, "train.batch_rays=255"), (256, 1, "train.lpips_patches=1")],
)
def test_a_global_batch_that_does_not_split_evenly_is_refused(
    rays: int, patches: int, key: str
) -> None:
    parallel = DataParallel(Ranks(rank=0, world_size=2), torch.device("cpu"))
    with pytest.raises(ConfigError, match=key):
        parallel.check_shares(rays, patches)
    DataParallel(Ranks(), torch.device("cpu")).check_shares(rays, patches)  # one process: any


def test_torchrun_environment_is_read_and_checked() -> None:
    assert environment_ranks({}) is None
    ranks = environment_ranks({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert ranks == Ranks(rank=3, world_size=4, local_rank=1)
    with pytest.raises(ConfigError, match="RANK=4"):
        environment_ranks({"RANK": "4", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        environment_ranks({"RANK": "0", "WORLD_SIZE": "two", "LOCAL_RANK": "0"})
