import glob
import json
import os
import subprocess
import sys

import matplotlib
import pytest

matplotlib.use("Agg")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ["learning_curves.ipynb", "aha_moment.ipynb"]
# every train.py run under results/: results/<what>/seedS, and a variant's results/<what>/<variant>/seedS
COMMITTED = sorted(os.path.dirname(p) for depth in (2, 3)
                   for p in glob.glob(os.path.join(ROOT, "results", *["*"] * depth, "metrics.jsonl")))


def run_notebook(path, results):
    """Execute a notebook's code cells in order, headless, as Jupyter would (cwd = the notebook's folder)."""
    cells = json.load(open(path))["cells"]
    old_cwd, old_env = os.getcwd(), os.environ.get("NANOR1_RESULTS")
    os.chdir(os.path.dirname(path))
    os.environ["NANOR1_RESULTS"] = results
    try:
        scope = {}
        for cell in cells:
            if cell["cell_type"] == "code":
                exec(compile("".join(cell["source"]), path, "exec"), scope)
        return scope
    finally:
        import matplotlib.pyplot as plt
        plt.close("all")  # the notebook's figures: pyplot keeps them alive otherwise
        os.chdir(old_cwd)
        if old_env is None:
            del os.environ["NANOR1_RESULTS"]
        else:
            os.environ["NANOR1_RESULTS"] = old_env


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory):
    """A real (tiny, CPU) train.py run, so the notebooks are tested on what train.py writes today."""
    out = str(tmp_path_factory.mktemp("run"))
    args = ["--preset", "tiny", "--device", "cpu", "--pretrain-steps", "10", "--pretrain-batch-size", "4",
            "--pretrain-seq-len", "64", "--pretrain-unique-tokens", "5000", "--pretrain-warmup", "2",
            "--log-every", "2", "--rl-steps", "3", "--rl-prompts-per-step", "2", "--rl-group-size", "2",
            "--rl-max-new-tokens", "16", "--eval-problems", "2", "--eval-samples", "2", "--out-dir", out]
    done = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_run_on_a_fresh_run(name, fresh_run):
    scope = run_notebook(os.path.join(ROOT, "notebooks", name), fresh_run)
    assert len(scope["rl"]) == 3 and scope["pre"]


@pytest.mark.parametrize("results", COMMITTED)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_run_on_committed_results(name, results):
    scope = run_notebook(os.path.join(ROOT, "notebooks", name), results)
    assert scope["rl"], "the committed metrics have RL steps"
    if name == "aha_moment.ipynb":
        assert scope["aha"], "the committed run saved aha transcripts"


def test_notebooks_say_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="NANOR1_RESULTS"):
        run_notebook(os.path.join(ROOT, "notebooks", NOTEBOOKS[0]), str(tmp_path))
