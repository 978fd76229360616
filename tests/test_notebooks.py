"""The data-science notebooks: committed without outputs, and each runs top to bottom on a fresh data dir.

Each notebook executes in a real Jupyter kernel (ipykernel, this virtualenv's Python) with
NOTEBOOK_SMALL=1 (few windows, few epochs), FACTORY_WINDOW_SECONDS=10 and FACTORY_DATA_DIR in a
new temporary directory, so it has to build everything it needs itself; any error in any cell
fails the test. Each must leave its figures as PNG files under DATA_DIR/notebooks/{notebook}/.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
EXPECTED = ["01_explore_windows", "02_retrain_rul", "03_anomaly_thresholds", "04_lineage"]
# The PNG figures each notebook must write (DATA_DIR/notebooks/{notebook}/{name}.png).
FIGURES = {
    "01_explore_windows": ["telemetry", "energy_scores", "robot_bearing_bands"],
    "02_retrain_rul": ["rul_variants", "rul_best_intervals"],
    "03_anomaly_thresholds": ["precision_recall", "threshold_sweep", "score_histogram"],
    "04_lineage": ["lineage"],
}
CELL_TIMEOUT_S = 240
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def test_the_four_notebooks_are_there() -> None:
    assert [path.stem for path in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    """Outputs, execution counts and widget state stay out of the repository (clear them before committing)."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    dirty = [
        i
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: code cells {dirty} hold outputs or execution counts; clear them"
    assert "widgets" not in notebook.metadata, f"{path.name}: notebook metadata holds widget state"
    assert WIDGET_STATE not in json.dumps(notebook.metadata), f"{path.name}: notebook metadata holds widget state"
    attachments = [i for i, cell in enumerate(notebook.cells) if cell.get("attachments")]
    assert not attachments, f"{path.name}: cells {attachments} carry attachments"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_starts_with_its_settings_cell(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert "settings" in first_code.metadata.get("tags", []), f"{path.name}: first code cell is not tagged settings"
    assert "notebook_settings()" in first_code.source and "SMALL" in first_code.source


@pytest.fixture(scope="module")
def python3_kernel() -> str:
    """The `python3` kernel starts this virtualenv's Python (jupyter_client runs `python` as sys.executable)."""
    spec = KernelSpecManager().get_kernel_spec("python3")
    executable = spec.argv[0]
    same = executable in {"python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"} or (
        Path(executable).resolve() == Path(sys.executable).resolve()
    )
    assert same, f"kernel python3 runs {executable}, not {sys.executable}; `python -m ipykernel install --sys-prefix`"
    return "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_top_to_bottom_on_a_fresh_data_dir(
    path: Path, tmp_path: Path, mqtt_url: str, python3_kernel: str
) -> None:
    data_dir = tmp_path / "data"
    no_config = tmp_path / "factory.yaml"
    no_config.write_text("{}\n")
    env = {
        **os.environ,
        "NOTEBOOK_SMALL": "1",
        "NOTEBOOK_RUN_TRAINING_JOB": "1",  # notebook 02 hands its best configuration to rul_lstm_training_job
        "FACTORY_DATA_DIR": str(data_dir),
        "FACTORY_MQTT_URL": mqtt_url,
        "FACTORY_WINDOW_SECONDS": "10",
        # Everything in the fresh data dir, whatever a developer's environment, .env or factory.yaml says:
        # a blank value means "not set" (the defaults under the data dir, the shipped alert rules).
        "FACTORY_CONFIG": str(no_config),
        "FACTORY_DB_URL": "",
        "FACTORY_MLFLOW_TRACKING_URI": "",
        "FACTORY_ALERT_RULES_FILE": "",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name=python3_kernel,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},  # Jupyter starts kernels in the notebook's folder
    )
    started = time.perf_counter()
    client.execute(env=env)  # CellExecutionError (with the cell and its traceback) on any error
    elapsed = time.perf_counter() - started
    print(f"{path.stem} ran in {elapsed:.0f} s")

    figures = data_dir / "notebooks" / path.stem
    for name in FIGURES[path.stem]:
        png = figures / f"{name}.png"
        assert png.is_file(), f"{path.name} wrote no {png}"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
