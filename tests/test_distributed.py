"""Data-parallel training (minflow.distributed) on the CPU: torchrun with 2 gloo processes takes the
same steps as one process with the same global batch and seed, resumes in one process, and stops
on a non-finite loss on every rank together with one message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from minflow import cli, distributed
from minflow.transforms import ActNorm

REPO = Path(__file__).resolve().parent.parent
TINY = [
    *("--levels", "2", "--flow-steps", "1", "--hidden", "8", "--nf", "8", "--blocks", "1", "--batch", "8"),
    *("--crop", "32", "--val-size", "64", "--val-samples", "1", "--no-progress", "--threads", "1", "--device", "cpu"),
]
TOLERANCE = 1e-5  # max |difference| of any parameter after the steps (float32 sums in another order; 5e-7 measured)


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def torchrun(args: list[str], processes: int = 2, script: Path | None = None) -> subprocess.CompletedProcess:
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    target = [str(script)] if script else ["-m", "minflow"]
    return subprocess.run([*head, *target, *args], capture_output=True, text=True, env=env(), timeout=600, cwd=REPO)


def one_process(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "minflow", *args], capture_output=True, text=True, env=env(), timeout=600, cwd=REPO
    )


def weights(runs: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(runs / name / "state.pt", weights_only=True)["model"]


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def check(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


# ----------------------------------------------------------------------------- two processes, one result


RANDOM_START = """
import sys, torch
from minflow import checkpoints, cli
build = checkpoints.build
def random_start(name, config):  # the zero-initialised layers given seeded random weights
    model, gen = build(name, config), torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model
checkpoints.build = random_start
cli.main(sys.argv[1:])
"""


@pytest.fixture
def random_start(tmp_path) -> Path:
    """A script that runs ``python -m minflow`` from a model whose zero-initialised layers are random.

    Why: at the usual start (every coupling the identity, ActNorm fitted to the batch) some
    gradients are zero in exact arithmetic, float32 rounding noise of about 1e-9 in practice, and
    Adam's first step, about lr * g / |g|, turns that noise into steps of size lr whose sign is
    chance. Any two runs then differ by about lr there, however they split the batch. From a random
    start no gradient is near zero and the comparison measures the split alone."""
    script = tmp_path / "random_start.py"
    script.write_text(RANDOM_START)
    return script


def one_process_script(script: Path, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env(), timeout=600)


def test_two_processes_take_the_steps_of_one_and_resume_in_one(tmp_path, random_start):
    common = ["--runs", str(tmp_path), *TINY, "--val-every", "2"]  # with a validation curve, on rank 0
    ran = check(torchrun(["train-sr", "--name", "two", "--steps", "3", *common], script=random_start))
    check(one_process_script(random_start, ["train-sr", "--name", "one", "--steps", "3", *common]))
    two, one = weights(tmp_path, "two"), weights(tmp_path, "one")
    start = weights_at_start(random_start, tmp_path)
    moved, gap = largest_difference(one, start), largest_difference(two, one)
    print(f"2 gloo processes vs 1 (3 steps, global batch 8): largest parameter difference {gap:.3g}, moved {moved:.3g}")
    assert gap < TOLERANCE < moved
    assert '"processes": 2' in (tmp_path / "two" / "checkpoints" / "two.json").read_text()
    # the DDP run's state (the unwrapped model's) resumes in one process: 3 + 2 steps = 5 steps
    resumed = check(one_process_script(random_start, ["train-sr", "--name", "two", "--steps", "5", *common]))
    assert "resuming two from step 3" in resumed.stdout
    check(one_process_script(random_start, ["train-sr", "--name", "five", "--steps", "5", *common]))
    gap5 = largest_difference(weights(tmp_path, "two"), weights(tmp_path, "five"))
    print(f"resumed in one process to step 5 vs 5 steps in one: largest parameter difference {gap5:.3g}")
    assert gap5 < TOLERANCE
    # the curve: computed once (rank 0), the points of one process, continued by the resumed run
    curve_two, curve_one = manifest_curve(tmp_path, "two"), manifest_curve(tmp_path, "one")
    assert curve_two["step"] == [2, 3, 4, 5] and curve_one["step"] == [2, 3]
    assert np.allclose(curve_two["val_bpd"][:2], curve_one["val_bpd"], rtol=0, atol=1e-4)
    assert (ran.stdout + ran.stderr).count("  val bpd ") == 2 and resumed.stdout.count("  val bpd ") == 2


def manifest_curve(runs: Path, name: str) -> dict:
    import json

    return json.loads((runs / name / "checkpoints" / f"{name}.json").read_text())["curve"]


def weights_at_start(script: Path, tmp_path: Path) -> dict:
    """The random start's weights (ActNorm not yet fitted), as the script builds them."""
    code = script.read_text().split("checkpoints.build = random_start")[0]
    scope: dict = {}
    exec(code, scope)
    from minflow.sr import SRFlowConfig

    config = SRFlowConfig(levels=2, flow_steps=1, hidden=8, nf=8, blocks=1)
    torch.manual_seed(0)
    return {k: v.detach() for k, v in scope["random_start"]("srflow", config).state_dict().items()}


def test_folder_data_two_processes_equal_one(tmp_path, random_start):
    from PIL import Image

    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48 + 8 * i, 56, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    common = ["--runs", str(tmp_path / "runs"), *TINY, "--steps", "2", "--data", str(tmp_path / "photos")]
    check(torchrun(["train-sr", "--name", "two", *common, "--workers", "1"], script=random_start))
    check(one_process_script(random_start, ["train-sr", "--name", "one", *common]))
    gap = largest_difference(weights(tmp_path / "runs", "two"), weights(tmp_path / "runs", "one"))
    print(f"folder data, 2 processes (1 worker each) vs 1: largest parameter difference {gap:.3g}")
    assert gap < TOLERANCE


# ----------------------------------------------------------------------------- the agreed stop

NAN_ON_RANK_1 = """
import os, sys, torch
from minflow.sr import SRFlow
from minflow import cli
calls = []
real = SRFlow.bits_per_dim
def nan_on_rank_1(self, x, cond=None):
    calls.append(1)
    out = real(self, x, cond)
    return out * float("nan") if os.environ["RANK"] == "1" and len(calls) >= 2 else out
SRFlow.bits_per_dim = nan_on_rank_1
cli.main(sys.argv[1:])
"""


def test_a_nonfinite_loss_on_one_rank_stops_every_rank_with_one_message(tmp_path):
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    done = torchrun(["train-sr", "--name", "bad", "--runs", str(tmp_path), *TINY, "--steps", "5"], script=script)
    assert done.returncode != 0
    messages = (done.stdout + done.stderr).count("error: non-finite loss at step 2")
    assert messages == 1, done.stderr[-3000:]
    assert "before any update" not in done.stderr  # the update of step 1 may have led there
    assert torch.load(tmp_path / "bad" / "state.pt", weights_only=True)["step"] == 0  # the last good state
    assert not (tmp_path / "bad" / "checkpoints" / "bad.pt").exists()


# ----------------------------------------------------------------------------- ActNorm and the hooks


def _actnorm_worker(rank: int, world: int, init: str, x: torch.Tensor, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    procs = distributed.Dist(rank, world)
    layer = ActNorm(x.shape[1])
    distributed.sync_actnorm(procs, layer)
    layer(x[distributed.share(procs, x.shape[0])])
    torch.save({"bias": layer.bias.detach(), "logs": layer.logs.detach()}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_actnorm_initialises_from_the_whole_global_batch(tmp_path):
    x = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_actnorm_worker, args=(2, init, x, str(tmp_path / "an")), nprocs=2)
    whole = ActNorm(3)
    whole(x)
    for rank in range(2):
        got = torch.load(f"{tmp_path / 'an'}.{rank}", weights_only=True)
        torch.testing.assert_close(got["bias"], whole.bias.detach(), rtol=0, atol=1e-5)
        torch.testing.assert_close(got["logs"], whole.logs.detach(), rtol=0, atol=1e-5)
    half = ActNorm(3)
    half(x[:4])  # one rank's share alone would give other values: the sync matters
    assert (half.bias - whole.bias).abs().max() > 1e-2


def test_share_and_setup_without_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    procs = distributed.setup("cpu")
    assert (procs.rank, procs.world, procs.main, procs.device) == (0, 1, True, torch.device("cpu"))
    assert distributed.share(distributed.Dist(1, 4), 8) == slice(2, 4)
    with pytest.raises(ValueError, match="multiple of the number of processes 3"):
        distributed.share(distributed.Dist(0, 3), 8)
    assert distributed.agree(procs, True) and not distributed.agree(procs, False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="inconsistent RANK=2, WORLD_SIZE=2"):
        distributed.setup("cpu")


def test_device_choice_is_checked():
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    assert distributed.resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="cpu or cuda"):
        distributed.resolve_device("meta")
    with pytest.raises(ValueError, match="unknown device"):
        distributed.resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no GPU"):
            distributed.resolve_device("cuda")
        with pytest.raises(SystemExit, match="no GPU"):
            cli.main(["train-toy", "--device", "cuda", "--steps", "1", "--no-progress", "--name", "x"])
