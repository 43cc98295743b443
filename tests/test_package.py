"""The distribution's layout: subpackages mapped from top-level folders, light imports, configs as data."""

import importlib.resources
import subprocess
import sys

import pytest


def test_lightweight_imports_do_not_pull_hydra_or_wandb():
    code = (
        "import sys, actsparse, actsparse.plugins, actsparse.metrics, actsparse.metrics.functional, "
        "actsparse.models;"
        "bad = [m for m in ('hydra', 'omegaconf', 'wandb') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported: {out.stdout.strip()}"


def test_callbacks_leave_plotting_and_the_data_room_to_first_use():
    """Callbacks import actsparse.report (matplotlib) and actsparse.data lazily (issue 11)."""
    code = (
        "import sys, actsparse.callbacks;"
        "print(','.join(m for m in ('actsparse.report', 'actsparse.data', 'torch_geometric') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported: {out.stdout.strip()}"


@pytest.mark.parametrize(
    "module, folder",
    [("actsparse.callbacks", "callbacks"), ("actsparse.metrics", "metrics"),
     ("actsparse.plugins", "plugins"), ("actsparse.conf", "conf")],
)
def test_top_level_folders_are_subpackages(module, folder):
    mod = __import__(module, fromlist=["_"])
    assert mod.__name__ == module
    # Installed editable the folder is the repository's; installed as a wheel it is actsparse/<name>.
    assert mod.__file__.replace("\\", "/").split("/")[-2] in {folder, module.split(".")[-1]}


def test_folders_are_not_top_level_imports(tmp_path):
    code = "import importlib.util as u; print([m for m in ('callbacks', 'metrics', 'plugins', 'conf') if u.find_spec(m)])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "[]"


def test_configs_ship_as_package_data():
    root = importlib.resources.files("actsparse.conf")
    assert (root / "train.yaml").is_file()
    for group in ("model", "data", "trainer", "callbacks", "logger", "experiment", "hydra/launcher"):
        assert any(p.name.endswith(".yaml") for p in (root / group).iterdir()), group
