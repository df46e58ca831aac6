"""The command line (python -m minflow train-sr | train-lowlight | train-toy, and the older forms)
and `train.fit`: where checkpoints go, what they refuse, and how a diverged run goes on. Nothing
here writes into the repository's data/: every test uses tmp folders (--runs and $MINFLOW_DATA)."""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from minflow import cli, toy
from minflow import train as train_mod
from minflow.checkpoints import available, data_dir, load_pretrained, load_state
from minflow.sr import SRFlow

REPO = Path(__file__).resolve().parent.parent
SHIPPED = data_dir() / "checkpoints"  # the repository's, read before any test changes $MINFLOW_DATA

TOY = ["--steps", "2", "--hidden", "8", "--depth", "1", "--flow-steps", "1", "--batch", "16", "--no-progress"]
SR = [
    "--levels",
    "2",
    "--flow-steps",
    "1",
    "--hidden",
    "8",
    "--nf",
    "8",
    "--blocks",
    "1",
    "--batch",
    "2",
    "--crop",
    "32",
    "--val-size",
    "64",
    "--val-samples",
    "1",
    "--no-progress",
    "--threads",
    "1",
]
LL = [
    "--levels",
    "2",
    "--hidden",
    "8",
    "--nf",
    "8",
    "--blocks",
    "1",
    "--batch",
    "2",
    "--crop",
    "16",
    "--val-size",
    "32",
    "--no-progress",
    "--threads",
    "1",
]
COMMANDS = {  # name -> (main, argv before the options, tiny options)
    "toy": (cli.main, ["train-toy"], TOY),
    "sr": (cli.main, ["train-sr"], [*SR, "--steps", "1"]),
    "lowlight": (cli.main, ["train-lowlight"], [*LL, "--steps", "1"]),
}


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    """An empty data folder standing in for the shipped one ($MINFLOW_DATA)."""
    folder = tmp_path / "data"
    (folder / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv("MINFLOW_DATA", str(folder))
    return folder


def command(which: str, tmp_path: Path, name: str, *extra: str):
    main, head, options = COMMANDS[which]
    return main([*head, "--name", name, "--runs", str(tmp_path / "runs"), *options, *extra])


def copy_shipped(name: str, data: Path) -> dict[str, bytes]:
    """Copy the shipped checkpoint `name` into the tmp data folder; its files' bytes."""
    if not (SHIPPED / f"{name}.pt").exists():
        pytest.skip(f"{name} is not shipped")
    for ext in ("pt", "json"):
        shutil.copy(SHIPPED / f"{name}.{ext}", data / "checkpoints")
    return files(data, name)


def files(data: Path, name: str) -> dict[str, bytes]:
    return {ext: (data / "checkpoints" / f"{name}.{ext}").read_bytes() for ext in ("pt", "json")}


def no_training(monkeypatch) -> None:
    """Make any training step an error, to show that a refusal comes before training."""

    def boom(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(toy, "train_toy", boom)
    monkeypatch.setattr(train_mod, "fit", boom)  # SR and low-light


# ----------------------------------------------------------------------------- where checkpoints go


@pytest.mark.parametrize("which", COMMANDS)
def test_checkpoints_go_into_the_run_folder_by_default(which, tmp_path, data):
    command(which, tmp_path, "r")
    run = tmp_path / "runs" / "r"
    assert available(data) == [] and available(run) == ["r"]
    model = load_pretrained("r", root=run)
    assert (
        model.manifest["command"].startswith("python -m minflow train-") and "--ship" not in model.manifest["command"]
    )


@pytest.mark.parametrize("which", COMMANDS)
def test_ship_writes_the_data_folder(which, tmp_path, data):
    command(which, tmp_path, "s", "--ship")
    assert available(data) == ["s"] and available(tmp_path / "runs" / "s") == []
    assert "--ship" in load_state("s", data)[1]["command"]


@pytest.mark.parametrize("which, shipped", [("toy", "toy_affine_s0"), ("sr", "sr_affine"), ("lowlight", "ll_affine")])
def test_a_shipped_checkpoint_is_replaced_only_with_force(which, shipped, tmp_path, data, monkeypatch):
    before = copy_shipped(shipped, data)
    command(which, tmp_path, shipped)  # no --ship: the run folder, the shipped file untouched
    assert files(data, shipped) == before and available(tmp_path / "runs" / shipped) == [shipped]
    with monkeypatch.context() as m:
        no_training(m)
        with pytest.raises(SystemExit, match=f"{shipped} already exists in .*add --force"):
            command(which, tmp_path, shipped, "--ship")
    assert files(data, shipped) == before
    command(which, tmp_path, shipped, "--ship", "--force")
    assert files(data, shipped)["pt"] != before["pt"]


def test_sr_early_checkpoint_is_checked_too(tmp_path, data, monkeypatch):
    copy_shipped("sr_affine_early", data)
    no_training(monkeypatch)
    with pytest.raises(SystemExit, match="sr_affine_early already exists"):
        command("sr", tmp_path, "sr_affine", "--steps", "2", "--early", "1", "--ship")
    assert not (tmp_path / "runs" / "sr_affine").exists()


def test_toy_run_folder_is_not_replaced_without_force(tmp_path, data):
    first = command("toy", tmp_path, "t").read_bytes()
    with pytest.raises(SystemExit, match="already exists.*add --force"):
        command("toy", tmp_path, "t", "--seed", "1")
    assert (tmp_path / "runs" / "t" / "checkpoints" / "t.pt").read_bytes() == first
    assert command("toy", tmp_path, "t", "--seed", "1", "--force").read_bytes() != first


def nan_at_training_step(monkeypatch, step: int):
    """SRFlow's training loss is NaN at that step (of this process's training steps), as in a diverged run."""
    nll, calls = SRFlow.nll_bpd, []

    def nll_bpd(self, hr, lr, generator=None):
        calls.append(self.training)  # validation (eval mode) does not count
        return nll(self, hr, lr, generator) * (math.nan if self.training and sum(calls) == step else 1.0)

    monkeypatch.setattr(SRFlow, "nll_bpd", nll_bpd)
    return nll


def test_a_shipped_run_that_resumes_does_not_trip_over_its_own_early_checkpoint(tmp_path, data, monkeypatch):
    nan_at_training_step(monkeypatch, 3)
    with pytest.raises(SystemExit, match="non-finite loss at step 3"):
        command("sr", tmp_path, "x", "--steps", "3", "--early", "1", "--ship")
    assert available(data) == ["x_early"]
    command("sr", tmp_path, "x", "--steps", "3", "--early", "1", "--ship")  # resumes from step 1: x_early stays
    assert available(data) == ["x", "x_early"] and load_state("x_early", data)[1]["steps"] == 1


# ----------------------------------------------------------------------------- arguments


BAD = [
    (which, option, value)
    for which in ("toy", "sr", "lowlight")
    for option, value in (
        ("--steps", "0"),
        ("--steps", "-1"),
        ("--steps", "1.5"),
        ("--batch", "0"),
        ("--flow-steps", "0"),
        ("--lr", "0"),
        ("--lr", "-1e-3"),
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--seed", "-1"),
        ("--threads", "-1"),
    )
]
BAD += [("toy", o, "0") for o in ("--hidden", "--depth")]
BAD += [
    (w, o, "0")
    for w in ("sr", "lowlight")
    for o in ("--save-every", "--hidden", "--nf", "--blocks", "--crop", "--levels")
]
BAD += [
    ("sr", "--val-samples", "0"),
    ("sr", "--early", "-1"),
    ("sr", "--early", "5"),
    ("sr", "--factor", "3"),
    ("sr", "--crop", "30"),
    ("sr", "--val-size", "2"),
    ("sr", "--coupling", "nope"),
    ("lowlight", "--crop", "18"),
    ("lowlight", "--coupling", "nope"),
    ("toy", "--coupling", "nope"),
    ("toy", "--root", "elsewhere"),
    ("sr", "--name", "../up"),
    ("toy", "--name", "a/b"),
]


@pytest.mark.parametrize("which, option, value", BAD)
def test_meaningless_arguments_are_argparse_errors(which, option, value, tmp_path, data, capsys, monkeypatch):
    no_training(monkeypatch)
    main, head, options = COMMANDS[which]
    argv = [
        *head,
        "--runs",
        str(tmp_path / "runs"),
        *options,
        "--steps",
        "5",
        *([] if option == "--name" else ["--name", "n"]),
    ]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: python -m minflow {head[0]}" in err and "error:" in err
    assert not (tmp_path / "runs").exists() and available(data) == []


def test_the_argparse_types():
    assert cli.positive_int("3") == 3 and cli.nonnegative_int("0") == 0 and cli.positive_float("1e-4") == 1e-4
    for fn, text in (
        (cli.positive_int, "0"),
        (cli.nonnegative_int, "-2"),
        (cli.positive_int, "x"),
        (cli.positive_float, "0"),
        (cli.positive_float, "nan"),
        (cli.positive_float, "-inf"),
    ):
        with pytest.raises(Exception, match="must be|not a"):
            fn(text)


def run_module(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_help_at_both_levels_exits_0():
    top = run_module("minflow", "--help")
    assert top.returncode == 0 and "usage: python -m minflow" in top.stdout
    assert all(c in top.stdout for c in ("train-sr", "train-lowlight", "train-toy"))
    for name in ("train-sr", "train-lowlight", "train-toy"):
        sub = run_module("minflow", name, "--help")
        assert sub.returncode == 0 and f"usage: python -m minflow {name}" in sub.stdout and "--ship" in sub.stdout
    bare = run_module("minflow")
    assert bare.returncode == 2 and "usage: python -m minflow" in bare.stderr and not bare.stdout


@pytest.mark.parametrize(
    "old, new",
    [
        (["minflow.train"], "train-sr"),
        (["minflow.toy"], "train-toy"),
        (["minflow.lowlight", "train"], "train-lowlight"),
    ],
)
def test_the_older_command_forms_are_aliases(old, new):
    done = run_module(*old, "--help")
    assert (
        done.returncode == 0 and f"usage: python -m minflow {new}" in done.stdout and not done.stderr
    )  # no runpy warning


@pytest.mark.parametrize("old, which", [(["minflow.toy"], "toy"), (["minflow.lowlight", "train"], "lowlight")])
def test_an_older_form_trains_and_records_the_new_form(old, which, tmp_path, data):
    options = COMMANDS[which][2]
    done = run_module(*old, "--name", "o", "--runs", str(tmp_path / "runs"), *options)
    assert done.returncode == 0, done.stderr
    command = load_state("o", tmp_path / "runs" / "o")[1]["command"]
    assert command.startswith("python -m minflow train-") and "--name o" in command


def test_importing_minflow_imports_no_model_or_program_module():
    done = subprocess.run(
        [sys.executable, "-c", "import sys, minflow; print(sorted(m for m in sys.modules if m.startswith('minflow')))"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    loaded = eval(done.stdout)
    assert not {"minflow.sr", "minflow.toy", "minflow.lowlight", "minflow.train", "minflow.cli"} & set(loaded)
    assert load_pretrained("toy_affine_s0").__class__.__name__ == "ConditionalFlow"  # builders resolve on demand


# ----------------------------------------------------------------------------- fit: divergence and resuming


LIMIT = 2.7


class Quadratic(nn.Module):
    """Loss (w - 10)^2, non-finite once |w| >= LIMIT: Adam moves w up by about lr a step, so with lr 1
    the update of step 3 takes w past LIMIT (the loss of step 4 is NaN) and with lr 0.5 it does not."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def nll_bpd(self, x, cond, generator=None):
        noise = torch.rand(x.shape, generator=generator)  # draws from the generator, as dequantisation does
        loss = (self.w - 10) ** 2 + 1e-3 * (x * noise)
        return loss if self.w.abs() < LIMIT else loss * math.nan


class NaNGradient(torch.autograd.Function):
    """The identity whose gradient is NaN."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.nan


class BadGradient(nn.Module):
    """A finite loss whose gradient is NaN."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def nll_bpd(self, x, cond, generator=None):
        return NaNGradient.apply(self.w) * x


def batches(gen: torch.Generator):
    return torch.rand(2, generator=gen), None


def fit_args(tmp_path: Path, name: str = "q", **kw) -> train_mod.TrainConfig:
    base = dict(
        threads=0,
        seed=0,
        batch=2,
        crop=1,
        learning_rate=1.0,
        runs=tmp_path / "runs",
        name=name,
        steps=4,
        save_every=100,
        progress=False,
    )
    return train_mod.TrainConfig(**{**base, **kw})


def state(tmp_path: Path, name: str = "q") -> dict:
    return torch.load(tmp_path / "runs" / name / "state.pt", weights_only=True)


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(same, a, b))
    return a == b


def test_divergence_saves_the_state_before_the_update_that_led_there(tmp_path):
    cmd = "python -m minflow train-sr --name q --lr 1.0"
    model = Quadratic()
    with pytest.raises(train_mod.NonFiniteLoss) as err:
        train_mod.fit(model, batches, fit_args(tmp_path), {}, command=cmd)
    message = str(err.value)
    assert "non-finite loss at step 4" in message and "before the update of step 3" in message
    assert message.splitlines()[-1].strip() == "python -m minflow train-sr --name q --lr 0.5"  # the resume command
    saved = state(tmp_path)
    assert saved["step"] == 2 and saved["lr_history"] == [[0, 1.0]]
    # exactly what a straight 2-step run leaves (model, optimiser, generator: the batch of step 3 is redrawn)
    train_mod.fit(Quadratic(), batches, fit_args(tmp_path, "straight", steps=2), {})
    straight = state(tmp_path, "straight")
    assert all(same(saved[k], straight[k]) for k in ("model", "optim", "generator", "step", "hyper"))
    assert same(model.state_dict(), saved["model"])  # the model is left at that state too
    # the same lr diverges again at the same step; half of it goes on past it
    with pytest.raises(train_mod.NonFiniteLoss, match="at step 4"):
        train_mod.fit(Quadratic(), batches, fit_args(tmp_path), {})
    progress = train_mod.fit(model := Quadratic(), batches, fit_args(tmp_path, learning_rate=0.5), {})
    assert progress.step == 4 and progress.lr_history == [[0, 1.0], [2, 0.5]] and torch.isfinite(model.w)
    done = state(tmp_path)
    assert done["step"] == 4 and done["lr_history"] == [[0, 1.0], [2, 0.5]]
    assert all(g["lr"] == 0.5 for g in done["optim"]["param_groups"])  # the optimiser runs at the new lr


def test_nan_gradient_stops_before_the_optimiser_moves(tmp_path):
    model = BadGradient()
    with pytest.raises(train_mod.NonFiniteLoss, match="non-finite gradient at step 1"):
        train_mod.fit(model, batches, fit_args(tmp_path, steps=3), {})
    assert model.w.item() == 1.0  # untouched
    saved = state(tmp_path)
    assert saved["step"] == 0 and saved["model"]["w"].item() == 1.0 and saved["optim"]["state"] == {}


def test_a_nonfinite_first_loss_says_a_smaller_lr_cannot_help(tmp_path):
    model = Quadratic()
    with torch.no_grad():
        model.w.fill_(LIMIT)
    with pytest.raises(train_mod.NonFiniteLoss, match="step 1 .*before any update, so a smaller --lr cannot help"):
        train_mod.fit(model, batches, fit_args(tmp_path), {}, command="python -m minflow train-sr --name q")


def test_saving_and_snapshots_do_not_change_the_result(tmp_path):
    a, b = Quadratic(), Quadratic()
    train_mod.fit(a, batches, fit_args(tmp_path, "a", learning_rate=0.1, steps=6, save_every=1), {})
    train_mod.fit(b, batches, fit_args(tmp_path, "b", learning_rate=0.1, steps=3), {})
    train_mod.fit(b, batches, fit_args(tmp_path, "b", learning_rate=0.1, steps=6), {})  # resumed
    assert torch.equal(a.w, b.w) and same(state(tmp_path, "a")["generator"], state(tmp_path, "b")["generator"])


def test_resume_refuses_a_larger_lr_and_other_settings(tmp_path):
    train_mod.fit(Quadratic(), batches, fit_args(tmp_path, learning_rate=0.1, steps=2), {"width": 8})
    with pytest.raises(train_mod.TrainError, match="goes on at --lr 0.1.*same or a smaller --lr, not 0.2"):
        train_mod.fit(Quadratic(), batches, fit_args(tmp_path, learning_rate=0.2, steps=3), {"width": 8})
    with pytest.raises(train_mod.TrainError, match="other settings.*setting batch: 2 there, 3 now"):
        train_mod.fit(Quadratic(), batches, fit_args(tmp_path, learning_rate=0.1, steps=3, batch=3), {"width": 8})
    with pytest.raises(train_mod.TrainError, match="other settings.*config width: 8 there, 16 now"):
        train_mod.fit(Quadratic(), batches, fit_args(tmp_path, learning_rate=0.1, steps=3), {"width": 16})
    assert state(tmp_path)["step"] == 2  # nothing changed


def test_a_state_with_older_config_keys_resumes_with_the_current_names(tmp_path):
    train_mod.fit(Quadratic(), batches, fit_args(tmp_path, learning_rate=0.1, steps=2), {"steps": 1, "width": 8})
    progress = train_mod.fit(
        Quadratic(),
        batches,
        fit_args(tmp_path, learning_rate=0.1, steps=3),
        {"flow_steps": 1, "hidden": 8},
        builder="srflow",
    )
    assert progress.step == 3
    with pytest.raises(train_mod.TrainError, match="config hidden: 8 there, 16 now"):
        train_mod.fit(
            Quadratic(),
            batches,
            fit_args(tmp_path, learning_rate=0.1, steps=4),
            {"flow_steps": 1, "hidden": 16},
            builder="srflow",
        )


def test_a_state_from_before_lr_history_resumes(tmp_path):
    train_mod.fit(Quadratic(), batches, fit_args(tmp_path, learning_rate=0.1, steps=2), {})
    old = state(tmp_path)
    del old["lr_history"]
    old["hyper"]["lr"] = 0.1  # how states recorded their one lr
    torch.save(old, tmp_path / "runs" / "q" / "state.pt")
    progress = train_mod.fit(Quadratic(), batches, fit_args(tmp_path, learning_rate=0.05, steps=3), {})
    assert progress.step == 3 and progress.lr_history == [[0, 0.1], [2, 0.05]]


def test_the_printed_resume_command_resumes_with_half_the_lr(tmp_path, data, monkeypatch):
    nll = nan_at_training_step(monkeypatch, 3)
    with pytest.raises(SystemExit) as exit_:
        command("sr", tmp_path, "d", "--steps", "4", "--lr", "4e-4")
    words = shlex.split(str(exit_.value.code).splitlines()[-1])
    assert words[:4] == ["python", "-m", "minflow", "train-sr"] and words[words.index("--lr") + 1] == "0.0002"
    monkeypatch.setattr(SRFlow, "nll_bpd", nll)
    with pytest.raises(SystemExit, match="same or a smaller --lr, not 0.0008"):
        cli.main([*words[3:-2], "--lr", "8e-4"])
    metrics = cli.main(words[3:])
    run = tmp_path / "runs" / "d"
    manifest = load_state("d", run)[1]
    assert manifest["metrics"] == metrics and manifest["steps"] == 4
    assert manifest["training"]["lr_history"] == state(tmp_path, "d")["lr_history"] == [[0, 4e-4], [1, 2e-4]]
    assert manifest["training"]["lr"] == 2e-4 and manifest["command"] == shlex.join(words)


# ----------------------------------------------------------------------------- configs and the library's shape


def test_train_config_refuses_meaningless_values(tmp_path):
    good = dict(name="n", runs=tmp_path)
    assert (
        train_mod.TrainConfig(**good).runs == tmp_path
        and train_mod.TrainConfig(name="n", runs=str(tmp_path)).runs == tmp_path
    )
    for bad, match in [
        ({"name": "../up"}, "plain file name"),
        ({"steps": 0}, "steps must be"),
        ({"batch": 1.5}, "whole number"),
        ({"learning_rate": 0.0}, "learning_rate must be"),
        ({"learning_rate": math.nan}, "learning_rate must be"),
        ({"seed": -1}, "seed must be"),
        ({"threads": True}, "threads must be"),
        ({"crop": 0}, "crop must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            train_mod.TrainConfig(**{**good, **bad})


def test_check_run_refuses_sizes_the_model_cannot_take(tmp_path):
    from minflow.lowlight import LLFlowConfig
    from minflow.sr import SRFlowConfig

    cfg = train_mod.TrainConfig(name="n", runs=tmp_path, steps=5, crop=30)
    with pytest.raises(ValueError, match="crop 30 must be a multiple of 4"):
        train_mod.check_run(SRFlowConfig(levels=2), cfg)
    with pytest.raises(ValueError, match="crop 30 must be a multiple of 8"):
        train_mod.check_run(LLFlowConfig(), cfg)
    ok = train_mod.TrainConfig(name="n", runs=tmp_path, steps=5, crop=32)
    with pytest.raises(ValueError, match="early 5 must be smaller than steps 5"):
        train_mod.check_run(SRFlowConfig(), ok, early=5)
    with pytest.raises(ValueError, match="val_size 2 must be 0"):
        train_mod.check_run(SRFlowConfig(), ok, val_size=2)
    train_mod.check_run(SRFlowConfig(), ok, early=4, val_size=64)


def module_level_imports(path: Path) -> set[str]:
    """The modules `path` imports at its top level (relative ones as '.name')."""
    import ast

    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out |= {base} if node.module else {f".{a.name}" for a in node.names}
    return out


def test_library_modules_hold_no_programs_and_models_never_import_training():
    package = REPO / "minflow"
    for path in [*package.glob("*.py"), *package.glob("data/*.py")]:
        text = path.read_text()
        if path.name in ("cli.py", "__main__.py"):
            continue
        assert "argparse" not in module_level_imports(path) and "ArgumentParser" not in text, path
        if 'if __name__ == "__main__":' in text:  # only a thin alias of a cli command
            alias = text.split('if __name__ == "__main__":')[1]
            assert "from .cli import main" in alias and len(alias.splitlines()) <= 6, path
    for model in ("sr", "lowlight", "toy", "imageflow", "flow", "couplings", "transforms", "splines"):
        assert not {".train", ".cli"} & module_level_imports(package / f"{model}.py"), model
