"""The walkthrough notebook runs top to bottom against the current library (tiny budgets, every picture it shows
exists). Its cells are executed in order in one namespace, as Jupyter would; only the budgets and the workspace
folder are swapped after the first cell."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import torch

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"

SMOKE = [
    "autoencoder.max_minutes=0",
    "autoencoder.max_steps=3",
    "autoencoder.sample_every=0",
    "training.max_minutes=0",
    "training.max_steps=3",
    "training.sample_every=0",
    "training.checkpoint_every=0",
    "training.sample_num_inference_steps=2",
    "training.sample_num_images=1",
]


def fake_ipython(shown: list[Path]) -> dict[str, types.ModuleType]:
    """``IPython.display`` (not a dependency of the project): ``Image`` / ``display`` that record what is shown.

    Present in ``sys.modules`` only while a cell imports it: libraries (tqdm, matplotlib) probe a loaded IPython."""
    display_mod = types.ModuleType("IPython.display")

    class Image:
        def __init__(self, filename: str):
            self.filename = Path(filename)

    display_mod.Image = Image
    display_mod.display = lambda obj: shown.append(obj.filename)
    ipython = types.ModuleType("IPython")
    ipython.display = display_mod
    return {"IPython": ipython, "IPython.display": display_mod}


def test_walkthrough_notebook_runs(tmp_path, monkeypatch, capsys):
    from ldm.config import load_config

    torch.set_num_threads(1)
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    monkeypatch.chdir(NOTEBOOK.parent)  # Jupyter's working directory: the notebook's folder
    ns: dict = {"__name__": "__main__"}
    shown: list[Path] = []
    for i, cell in enumerate(cells):
        source = "".join(cell["source"])
        with monkeypatch.context() as m:
            if "IPython" in source:
                for name, module in fake_ipython(shown).items():
                    m.setitem(sys.modules, name, module)
            exec(compile(source, f"{NOTEBOOK.name}[code cell {i}]", "exec"), ns)
        if i == 0:
            assert ns["cfg"].unet.preset and ns["cfg"].training.max_minutes > 0  # the notebook's own recipe
            ns["cfg"] = load_config(os.path.join("..", "configs", "demo.yaml"), SMOKE)
            ns["work"] = tmp_path / "notebook-workspace"
    work = tmp_path / "notebook-workspace"
    assert not (NOTEBOOK.parent / "notebook-workspace").exists()
    # what the notebook promises: a dataset, an autoencoder, a latent cache, a run with its exported pipeline, samples
    assert (work / "vae" / "vae" / "config.json").is_file()
    assert (work / "latents" / "manifest.json").is_file()
    assert (work / "run" / "pipeline" / "model_index.json").is_file()
    assert [p.name for p in shown] == ["step-000003.png", "loss.png", "grid.png", "snapshots.png"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in shown)
    assert "['frowning', 'sleepy', 'smiling', 'surprised', 'winking'] 500 images, 0 skipped" in capsys.readouterr().out
