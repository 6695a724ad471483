import json
import os

import matplotlib
import pytest

matplotlib.use("Agg")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        os.chdir(old_cwd)
        if old_env is None:
            del os.environ["NANOR1_RESULTS"]
        else:
            os.environ["NANOR1_RESULTS"] = old_env


@pytest.mark.parametrize("name", ["learning_curves.ipynb", "aha_moment.ipynb"])
def test_notebooks_run_on_committed_results(name):
    scope = run_notebook(os.path.join(ROOT, "notebooks", name), os.path.join(ROOT, "results", "seed0"))
    assert scope["rl"], "the committed metrics have RL steps"
    if name == "aha_moment.ipynb":
        assert scope["aha"], "the committed run saved aha transcripts"
