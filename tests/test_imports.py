"""The import graph of the project's own modules, read from their source (ast): train.py is the top, which no
module imports, and the graph has no cycle, so every module can be read (and tested) knowing only those below it.
And the lesson, the files README.md's "Read the code" lists: they never import the engine nor hold its machinery."""
import ast
import re
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
            "kernels.bench", "engine", "engine.decoder"} <= set(GRAPH)
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


LESSON = ("template", "languages", "rewards", "data", "model", "sample", "grpo", "pretrain", "sft", "config",
          "checkpoint", "distributed")
ENGINE = [module for module in GRAPH if module.split(".")[0] in ("engine", "kernels")]


def test_the_lesson_never_imports_the_engine():
    # the engine swaps itself in from the stage runners (rl.py, base.py, evaluate.py, rejection.py)
    for module in LESSON:
        assert not GRAPH[module] & set(ENGINE), (module, GRAPH[module] & set(ENGINE))


def test_lower_modules_import_no_stage():
    # the leaves and the modules every stage builds on stay below the stages (README: the files)
    lower = ("template", "languages", "rewards", "data", "model", "checkpoint", "distributed")
    stages = ("sample", "grpo", "sft", "rejection", "evaluate", "pretrain", "base", "rl", "r1", "config", "curves",
              "distill", "train")
    for module in lower:
        assert not GRAPH[module] & set(stages), (module, GRAPH[module] & set(stages))
    assert GRAPH["template"] == set() and GRAPH["languages"] == set()


# -----------------------------------------------------------------------------
# The lesson: the files README.md's "Read the code" lists, in reading order, with their line counts

README = os.path.join(ROOT, "README.md")
MACHINERY = {  # what the engine does, and the lesson never: compiled code, CUDA graphs, Triton, torch.distributed
    "torch.compile": r"torch\.compile|torch\._dynamo|torch\._inductor",
    "a CUDA graph": r"CUDAGraph|torch\.cuda\.graph|graph_pool_handle",
    "Triton": r"^\s*(import|from)\s+(triton|kernels)\b",
    "torch.distributed": r"torch\.distributed|DistributedDataParallel|^\s*import\s+torch\.distributed",
}


def read_the_code():
    """[(file, stated line count)] of README.md's "Read the code" list, and the total it states."""
    text = open(README).read()
    section = text[text.index("## Read the code"):]
    section = section[:section.index("\n## ", 1)]
    files = [(name, int(n)) for name, n in re.findall(r"^\d+\. \[`([\w/]+\.py)`\]\([\w/.]+\) \((\d+) lines\)", section,
                                                      re.MULTILINE)]
    total = int(re.search(r"\(([\d,]+) lines in all\)", section)[1].replace(",", ""))
    return files, total


def test_the_lesson_is_listed_with_its_true_line_counts():
    files, total = read_the_code()
    assert len(files) >= 6 and {"model.py", "sample.py", "grpo.py", "pretrain.py"} <= {name for name, _ in files}
    for name, stated in files:
        assert sum(1 for _ in open(os.path.join(ROOT, name))) == stated, name
    assert total == sum(n for _, n in files)


def test_the_lesson_holds_no_engine_machinery():
    for name, _ in read_the_code()[0]:
        source = open(os.path.join(ROOT, name)).read()
        for what, pattern in MACHINERY.items():
            assert not re.search(pattern, source, re.MULTILINE), f"{name} holds {what}"


def test_the_machinery_check_finds_what_it_looks_for():
    found = {what for what, pattern in MACHINERY.items()
             for path in ("engine/compile.py", "engine/decoder.py", "kernels/decode.py", "distributed.py")
             if re.search(pattern, open(os.path.join(ROOT, path)).read(), re.MULTILINE)}
    assert found == set(MACHINERY)
