"""Ship a finished run's checkpoint under a shipped name (developer tool, not part of the package).

    python tools/ship_run.py RUN_FOLDER RUN_NAME SHIPPED_NAME

Copies RUN_FOLDER/checkpoints/RUN_NAME.{pt,json} into data/checkpoints/SHIPPED_NAME.{pt,json}
($MINFLOW_DATA when set). The weights are unchanged; the manifest keeps every measured field
(metrics, curve, wall time) and its command is rewritten to the one that trains the same model
straight into the shipped folder: ``--name`` becomes the shipped name (an early snapshot keeps
its ``_early`` suffix), ``--runs`` and ``--no-progress`` are dropped, ``--ship --force`` added.
The run name only names files, so the rewritten command trains the same model.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from minflow import checkpoints

DROP_WITH_VALUE = {"--runs"}
DROP = {"--no-progress", "--ship", "--force"}


def shipped_command(command: str, name: str) -> str:
    """`command` with ``--name`` set to `name` (the base name of an ``_early`` snapshot), run
    folders and progress flags dropped, and ``--ship --force`` added."""
    words, out, i = shlex.split(command), [], 0
    while i < len(words):
        word = words[i]
        if word in DROP_WITH_VALUE:
            i += 2
            continue
        if word == "--name":
            out += ["--name", name.removesuffix("_early")]
            i += 2
            continue
        if word not in DROP:
            out.append(word)
        i += 1
    return shlex.join([*out, "--ship", "--force"])


def ship_run(run: Path, run_name: str, name: str) -> Path:
    """Write checkpoint `name` into the shipped folder from `run_name` of run folder `run`."""
    state, manifest = checkpoints.load_state(run_name, root=run)
    model = checkpoints.build(manifest["builder"], manifest["config"])
    model.load_state_dict(state)
    record = {k: v for k, v in manifest.items() if k not in checkpoints.MANIFEST_KEYS}
    record["command"] = shipped_command(manifest["command"], name)
    return checkpoints.save_checkpoint(model, name, manifest["builder"], manifest["config"], record)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(ship_run(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
