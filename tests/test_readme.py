"""The README's headline table says what its eval.json files say, and its test command is the one CI runs.

The headline table follows the comment `<!-- headline table ... -->`. Its first column links each row's eval.json
relative to the repository root (`[R1-Zero, seed 0](results/r1-zero/seed0/eval.json)`); a fragment names the stage
the row reports (`eval.json#r1` for R1's last stage; `rl` when there is none). Every other column is one of COLUMNS,
and every cell must be the value formatted as COLUMNS says (percentages with one decimal, growth with two, halves
rounded up), or `-` where the file has no such value; bold is allowed. `TODO` cells are placeholders, allowed only
while PLACEHOLDERS_ALLOWED; a row of placeholders only may link a file that does not exist yet.

    python tests/test_readme.py [README]    # prints the table as the eval.json files make it: paste it
"""
import json
import os
import re
import sys
from decimal import ROUND_HALF_UP, Decimal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADLINE_README = os.path.join(ROOT, "README.md")
PLACEHOLDERS_ALLOWED = False

MARKER = "<!-- headline table"
PLACEHOLDER = "TODO"
LINK = re.compile(r"^\[(?P<label>[^\]]+)\]\((?P<path>[^)#\s]+\.json)(?:#(?P<stage>[\w@-]+))?\)$")


def fixed(v, digits, scale=1):
    """v * scale with `digits` decimals, halves rounded up from v's shortest repr: what one writes by hand
    (0.1625 -> 16.3 as a percentage, where f"{100 * 0.1625:.1f}" gives 16.2)."""
    return str((Decimal(repr(v)) * scale).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def percent(v):
    return fixed(v, 1, 100) + "%"


def ratio(v):
    return fixed(v, 2) + "x"


# per-stage metrics: header -> (key in the stage's evaluation, format); "base <header>" reads the base model's
STAGE_COLUMNS = {
    "pass@1": ("pass@1", percent),
    "cons@16": ("cons@16", percent),
    "cons@4": ("cons@4", percent),
    "format rate": ("format_rate", percent),
    "mean tokens": ("mean_response_tokens", lambda v: fixed(v, 0)),
    "reflections": ("reflections_per_response", lambda v: fixed(v, 1)),
    "language consistency": ("language_consistency", lambda v: fixed(v, 3)),
}
# growth over R1-Zero's RL: header -> key in its growth record, rl_growth (R1's stages start from a cold start that
# already reflects: their growth is no R1-Zero signature, and an R1 row's growth cells are -)
GROWTH_COLUMNS = {"length growth": "response_len_mean", "reflection growth": "reflection_rate",
                  "accuracy growth": "accuracy"}
COLUMNS = [*STAGE_COLUMNS, *(f"base {h}" for h in STAGE_COLUMNS), *GROWTH_COLUMNS, "wall time"]


def expected_cell(header, ev, stage):
    """The cell `header` must hold for evaluation file `ev` (a dict) and the row's stage; None if the file has
    no such value (the cell is then `-`). KeyError for a header that is not in COLUMNS."""
    if header == "wall time":
        seconds = ev.get("wall_time_s")
        return None if seconds is None else fixed(seconds / 60, 1) + " min"
    if header in GROWTH_COLUMNS:
        ratio_ = ev.get("rl_growth", {}).get(GROWTH_COLUMNS[header], {}).get("ratio") if stage == "rl" else None
        return None if ratio_ is None else ratio(ratio_)
    if header.startswith("base "):
        header, stage = header[len("base "):], "base"
    key, fmt = STAGE_COLUMNS[header]
    value = ev.get(stage, {}).get(key)
    return None if value is None else fmt(value)


def headline_table(text):
    """(headers, rows) of the table after MARKER; each row (label, path, stage, cells). ValueError if none."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith(MARKER)), None)
    if start is None:
        raise ValueError(f"no {MARKER} ... --> comment")
    table = []
    for line in lines[start + 1:]:
        if not line.strip().startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    if len(table) < 3 or not all(set(c) <= set("-: ") for c in table[1]):
        raise ValueError(f"no table right after {MARKER} ... -->")
    headers, rows = table[0], []
    for cells in table[2:]:
        link = LINK.match(cells[0])
        if link is None:
            raise ValueError(f"a row's first cell does not link its eval.json: {cells[0]!r}")
        rows.append((link["label"], link["path"], link["stage"] or "rl", cells[1:]))
    return headers, rows


def check_table(readme, placeholders_allowed=False, base=None):
    """Every way the headline table of file `readme` differs from the eval.json files it links (relative to
    `base`, by default the README's folder), as strings."""
    try:
        headers, rows = headline_table(open(readme).read())
    except ValueError as e:
        return [f"{readme}: {e}"]
    errors = [f"column {h!r} is not one this test checks ({COLUMNS})" for h in headers[1:] if h not in COLUMNS]
    if errors:
        return errors
    for label, path, stage, cells in rows:
        if len(cells) != len(headers) - 1:
            errors.append(f"{label}: {len(cells)} cells for {len(headers) - 1} columns")
            continue
        cells = [cell.replace("*", "") for cell in cells]  # bold is allowed
        todo = [cell == PLACEHOLDER for cell in cells]
        if any(todo) and not placeholders_allowed:
            errors.append(f"{label}: {PLACEHOLDER} cells")
        if all(t or cell == "-" for t, cell in zip(todo, cells)):
            continue  # a placeholder row: its run need not exist yet
        file = os.path.join(base or os.path.dirname(readme), path)
        if not os.path.exists(file):
            errors.append(f"{label}: {path} does not exist")
            continue
        ev = json.load(open(file))
        if stage not in ev:
            errors.append(f"{label}: {path} has no stage {stage!r}")
            continue
        for header, cell, is_todo in zip(headers[1:], cells, todo):
            want = expected_cell(header, ev, stage)
            if not is_todo and cell != (want or "-"):
                errors.append(f"{label}, {header}: the README says {cell!r}, {path} says {want or '-'!r}")
    return errors


def expected_table(readme, base=None):
    """The headline table of `readme` with every cell as its eval.json makes it (for writing the README)."""
    headers, rows = headline_table(open(readme).read())
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    for label, path, stage, _ in rows:
        file = os.path.join(base or os.path.dirname(readme), path)
        ev = json.load(open(file)) if os.path.exists(file) else None  # not made yet: placeholders
        link = f"[{label}]({path}{'' if stage == 'rl' else '#' + stage})"
        cells = [expected_cell(h, ev, stage) or "-" if ev else PLACEHOLDER for h in headers[1:]]
        out.append("| " + " | ".join([link] + cells) + " |")
    return "\n".join(out)


def test_headline_table_matches_its_eval_files():
    assert check_table(HEADLINE_README, placeholders_allowed=PLACEHOLDERS_ALLOWED, base=ROOT) == []


def test_check_table_finds_every_kind_of_difference(tmp_path):
    zero = {"base": {"pass@1": 0.180625, "cons@16": 0.265}, "rl": {"pass@1": 0.7565625, "cons@16": 0.865,
            "language_consistency": 0.0}, "rl_growth": {"response_len_mean": {"ratio": 3.6857},
            "reflection_rate": {"ratio": 5.2415}}, "wall_time_s": 221.4}
    r1 = {"base": {"pass@1": 0.197, "cons@16": 0.285}, "r1": {"pass@1": 0.865, "cons@16": 0.98,
          "language_consistency": 1.0}, "rl_final_growth": {"response_len_mean": {"ratio": 1.01},
          "reflection_rate": {"ratio": 0.98}}, "wall_time_s": 1140.0}
    cpu = {"base": {"pass@1": 0.1625, "cons@4": 0.15}, "rl": {"pass@1": 0.4325, "cons@4": 0.46,
           "language_consistency": 1.0}, "rl_growth": {"response_len_mean": {"ratio": 2.47},
           "reflection_rate": {"ratio": 3.59}}, "wall_time_s": 2560.0}
    for name, ev in [("zero", zero), ("r1", r1), ("cpu", cpu)]:
        (tmp_path / "results" / name).mkdir(parents=True)
        (tmp_path / "results" / name / "eval.json").write_text(json.dumps(ev))
    header = ("| run | base pass@1 | pass@1 | cons@16 | length growth | reflection growth | language consistency "
              "| wall time |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n")
    rows = ["| [R1-Zero, seed 0](results/zero/eval.json) | 18.1% | **75.7%** | 86.5% | 3.69x | 5.24x | 0.000 "
            "| 3.7 min |",
            "| [R1, seed 0](results/r1/eval.json#r1) | 19.7% | 86.5% | 98.0% | - | - | 1.000 | 19.0 min |",
            "| [CPU, seed 0](results/cpu/eval.json) | 16.3% | 43.3% | - | 2.47x | 3.59x | 1.000 | 42.7 min |"]

    def check(*rows, header=header, placeholders_allowed=False):
        readme = tmp_path / "README.md"
        readme.write_text("# nanoR1\n\n<!-- headline table: checked -->\n" + header + "\n".join(rows) + "\n\nmore\n")
        return check_table(str(readme), placeholders_allowed)

    assert check(*rows) == []
    assert expected_table(str(tmp_path / "README.md")).splitlines()[2].endswith("| 18.1% | 75.7% | 86.5% | 3.69x | "
                                                                                "5.24x | 0.000 | 3.7 min |")
    wrong = check(rows[0].replace("75.7%", "75.6%"), *rows[1:])
    assert len(wrong) == 1 and "pass@1" in wrong[0] and "'75.7%'" in wrong[0]
    assert len(check(rows[0], rows[1], rows[2].replace("| - |", "| 46.0% |"))) == 1  # cons@16: the CPU run has none
    assert len(check(rows[0].replace("| 0.000 |", "| - |"), *rows[1:])) == 1      # a dash where the file has a value
    assert len(check(rows[0], rows[1].replace("#r1", ""), rows[2])) == 1            # r1's file has no stage "rl"
    assert len(check(rows[0].replace("results/zero", "results/gone"), *rows[1:])) == 1
    assert len(check(rows[0].replace("[R1-Zero, seed 0](results/zero/eval.json)", "R1-Zero"), *rows[1:])) == 1
    assert len(check(rows[0].replace(" | 3.7 min |", " |"), *rows[1:])) == 1      # a cell missing
    assert check(*rows, header=header.replace("wall time", "minutes"))              # a column nobody checks
    todo = "| [R1-Zero, seed 1](results/not-yet/eval.json) | TODO | TODO | TODO | TODO | TODO | TODO | TODO |"
    assert check(*rows, todo, placeholders_allowed=True) == []
    assert check(*rows, todo) == ["R1-Zero, seed 1: TODO cells"]
    assert len(check(rows[0].replace("86.5%", "TODO"), *rows[1:], placeholders_allowed=True)) == 0
    readme = tmp_path / "README.md"
    readme.write_text("# nanoR1\n\n" + header + rows[0] + "\n")
    assert check_table(str(readme)) and "no <!-- headline table" in check_table(str(readme))[0]


def pytest_commands(text):
    """The `python -m pytest ...` commands in text, `python3` read as `python`, comments and `cmd &&` dropped."""
    commands = set()
    for line in text.splitlines():
        line = line.split("#")[0] if not line.lstrip().startswith("#") else ""
        for part in line.split("&&"):
            part = " ".join(part.split())
            if re.match(r"^python3? -m pytest\b", part):
                commands.add(re.sub(r"^python3 ", "python ", part))
    return commands


def test_readme_test_command_is_the_one_ci_runs():
    ci = pytest_commands(open(os.path.join(ROOT, ".ci", "run")).read())
    assert ci, ".ci/run runs no `python -m pytest`"
    for readme in sorted({os.path.join(ROOT, "README.md"), HEADLINE_README}):
        commands = pytest_commands(open(readme).read())
        assert len(commands) == 1, (readme, commands)
        assert commands <= ci, f"{readme}'s test command {commands} is not one .ci/run runs ({ci})"


if __name__ == "__main__":
    print(expected_table(sys.argv[1] if len(sys.argv) > 1 else HEADLINE_README, base=ROOT))
