"""The import graph of the project's own modules, read from their source (ast): train.py is the top, which no
module imports, and the graph has no cycle, so every module can be read (and tested) knowing only those below it."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the project's modules by import name: top-level files, packages, and the modules inside those
FILES = {os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__"): path
         for path in glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "*", "*.py"))
         if not os.path.relpath(path, ROOT).startswith("tests")}


def imports_of(path):
    """The project modules a file imports, at any depth of the file (imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:  # "kernels.logprobs" is the module itself; "kernels" its package
            while name and name not in FILES:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


GRAPH = {module: imports_of(path) - {module} for module, path in FILES.items()}


def test_the_graph_covers_the_project():
    assert {"train", "config", "data", "rewards", "template", "grpo", "benchmarks.bench_speed", "kernels",
            "kernels.bench"} <= set(GRAPH)
    assert "rewards" in GRAPH["data"] and "train" not in GRAPH["train"]


def test_no_module_imports_train():
    assert [module for module, imported in GRAPH.items() if "train" in imported] == []


def test_the_import_graph_has_no_cycle():
    done, path = set(), []

    def visit(module):  # depth first; meeting a module of the current path again is a cycle
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module not in done:
            path.append(module)
            for imported in sorted(GRAPH[module]):
                visit(imported)
            path.pop()
            done.add(module)

    for module in sorted(GRAPH):
        visit(module)


def test_lower_modules_import_no_stage():
    # the leaves and the modules every stage builds on stay below the stages (README: the files)
    lower = ("template", "languages", "rewards", "data", "model", "kernels", "checkpoint", "distributed")
    stages = ("sample", "grpo", "sft", "rejection", "evaluate", "pretrain", "rl", "r1", "config", "curves",
              "distill", "train")
    for module in lower:
        assert not GRAPH[module] & set(stages), (module, GRAPH[module] & set(stages))
    assert GRAPH["template"] == set() and GRAPH["languages"] == set()
