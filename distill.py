"""
Distillation against RL on the student (DeepSeek-R1, arXiv:2501.12948, sec. 2.4 and 4.1): is it better to
fine-tune a small dense model on a strong reasoner's samples, or to run the same large-scale RL on the small
model itself? R1 finds distillation wins (sec. 4.1: Qwen-32B distilled from R1 beats Qwen-32B after 10K+ RL
steps). This runs that comparison at nanoR1's scale, for each student size and seed:

1. teacher data (once): rejection-sample the teacher (the run's rl_final.pt from --recipe r1, else rl.pt) on RL
   "train" problems (rejection.py) -> teacher.jsonl;
2. base student: pretrain the student preset on the teacher's corpus with the teacher's token budget;
3. RL baseline: GRPO on the base student, with at least as many steps as the teacher got (rl.run_rl);
4. distilled: SFT of the base student on teacher.jsonl (sft.py; R1 distils with SFT only);
5. distilled+RL: a GRPO stage on the distilled student with the settings of R1's stage 4, RL after SFT (R1
   sec. 2.4 leaves this to the community);

Where the comparison's condition holds. In R1 the small model's base holds far less of the teacher's reasoning
than the teacher's base did (scale). Here a student pretrains on the teacher's corpus by default, so its base holds
the same reflect answers that RL amplified in the teacher. --student-reflect-scales 1 0.1 adds students whose corpus
has p_reflect 10x lower (the analogue of a smaller base that reflects less), beside the same-corpus ones;

and evaluates the base, RL, distilled and distilled+RL students and the teacher on the teacher's held-out
problems with the teacher's evaluation protocol (pass@1 over k samples, cons@k, length, reflections).

    python distill.py --teacher out                          # dense-1m, dense-4m, dense-12m; seed 0
    python distill.py --teacher out --students dense-1m --seeds 0 1 2 --distill-rl-steps 40
    python distill.py --teacher out --student-reflect-scales 1 0.1    # the same corpus and a 10x weaker prior
    CUDA_VISIBLE_DEVICES=1 python distill.py --teacher out --seeds 1   # another GPU, once teacher_eval.json exists

It always resumes: a step whose output exists is skipped, and an interrupted stage continues from its own
checkpoint. A comparison folder made with other settings is refused (use another --out-dir).

Writes to --out-dir (default TEACHER/distill): teacher.jsonl, rejection.json (its stats), teacher_eval.json,
students/PRESET/seedN/ (base.pt, rl.pt, distilled.pt, distilled_rl.pt, the stages' resumable checkpoints,
metrics.jsonl, aha.jsonl, eval.json; students_reflectS/PRESET/seedN/ for a reflect scale S other than 1),
distill.json (every student folder's evaluations under "students", those of other corpora under
"students_by_reflect_scale", the teacher's, the rejection stats, the settings and provenance of the last run) and
distill.png (held-out pass@1 vs student size, one panel per student corpus, one line per method, the teacher as a
horizontal line).
"""

import argparse
import hashlib
import json
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Annotated

import torch

import data
from base import pretrain_base
from checkpoint import drop_rows_from, git_commit, load_checkpoint, save_checkpoint, tokenizer_sha256
from config import R1Config, TrainConfig, add_config_flags
from evaluate import evaluate
from grpo import GRPOConfig
from model import Transformer, make_config
from rejection import RejectionConfig, rejection_sample
from rl import run_rl
from sft import SFTConfig, load_examples, sft

METHODS = ("base", "rl", "distilled", "distilled_rl")
TEACHER_CHECKPOINTS = ("rl_final.pt", "rl.pt")  # the final model of an R1 recipe, else of the R1-Zero pipeline


@dataclass
class DistillConfig:
    teacher: Annotated[str, "the teacher's train.py --out-dir"] = ""
    out_dir: Annotated[str, "where the comparison is written; \"\": TEACHER/distill"] = ""
    students: Annotated[tuple, "model presets (model.PRESETS)"] = ("dense-1m", "dense-4m", "dense-12m")
    seeds: Annotated[tuple, "each student size is trained once per seed"] = (0,)
    student_reflect_scales: Annotated[tuple, "the students' corpus p_reflect times each (1: the teacher's "
                                      "corpus)"] = (1.0,)
    rl_steps: Annotated[int, "the RL baseline's steps; 0: as many as the teacher got (fewer: refused)"] = 0
    # half the RL baseline's steps: enough to move a distilled student by more than the evaluation's sampling noise
    # (up to about 1.3 points of pass@1 between two models at 200 problems x 16 samples)
    distill_rl_steps: Annotated[int, "steps of the GRPO stage on the distilled student"] = 60
    reject_problems: Annotated[int, "RL train problems the teacher answers (rejection.py); 0: every one"] = 0
    eval_problems: Annotated[int, "held-out problems; 0: the teacher's eval_problems"] = 0
    eval_samples: Annotated[int, "k; 0: the teacher's eval_samples"] = 0
    device: Annotated[str, "auto: cuda if available, else cpu"] = "auto"
    # half of pretraining's peak rate: at 1e-4 (R1's SFT stages) a 1.2M student that seldom reflects ends at SFT
    # loss 0.108, its checks right 23% of the time and its pass@1 under RL's on the same student; at 1e-3 it ends at
    # 0.092, its checks right 97% of the time and its pass@1 near the teacher's (docs/distillation.md)
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(lr=1e-3))
    # 32 answers to each train problem, up to 16 kept (about 30k). With 1,000 problems x 8 answers (3.7k kept) the
    # students whose corpus seldom reflects imitated the teacher's checks without making them ("Let me verify: v = T"
    # with v the target in 17-23% of their checks); with 8x the answers they make them far more often
    # (results/distill, verify precision)
    rejection: RejectionConfig = field(default_factory=lambda: RejectionConfig(samples_per_prompt=32,
                                                                               keep_per_prompt=16))

    def validate(self):
        if not self.teacher:
            raise ValueError("--teacher is required: the folder of a train.py run (its --out-dir)")
        if not self.students or len(set(self.students)) != len(self.students):
            raise ValueError(f"--students must name one or more distinct presets, got {list(self.students)}")
        for preset in self.students:
            make_config(preset)  # raises for an unknown preset
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"--seeds must be one or more distinct integers >= 0, got {list(self.seeds)}")
        scales = self.student_reflect_scales
        if not scales or len(set(scales)) != len(scales) or not all(0 <= x < float("inf") for x in scales):
            raise ValueError(f"--student-reflect-scales must be one or more distinct numbers >= 0, got {list(scales)}")
        for name in ("rl_steps", "distill_rl_steps", "eval_problems", "eval_samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.reject_problems < 0:
            raise ValueError(f"--reject-problems must be >= 0 (0: every train problem), got {self.reject_problems}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda[:N], got {self.device}")
        self.sft.validate()
        self.rejection.validate()


# settings that may change between runs into the same --out-dir: more sizes or seeds, another device, intervals
FREE_TO_CHANGE = ("students", "seeds", "student_reflect_scales", "device", "sft.log_every", "sft.checkpoint_every",
                  "rejection.batch_size")


def students_folder(reflect_scale):
    """The folder (under --out-dir) of the students pretrained on a corpus of this reflect scale."""
    return "students" if reflect_scale == 1 else f"students_reflect{reflect_scale:g}"


def student_corpus(teacher_corpus, reflect_scale):
    """The students' corpus: the teacher's, with p_reflect times reflect_scale (the answers taken from reflect
    become guesses; tries keep their share). Stops clearly if that is no valid corpus."""
    corpus = replace(teacher_corpus, p_reflect=teacher_corpus.p_reflect * reflect_scale)
    try:
        corpus.validate()
    except ValueError as err:
        raise SystemExit(f"--student-reflect-scales {reflect_scale:g} makes no valid student corpus from the "
                         f"teacher's (p_reflect {teacher_corpus.p_reflect}): {err}") from None
    return corpus


def train_config_from(saved: dict) -> TrainConfig:
    """A TrainConfig from its asdict() form; fields this train.py does not know (a newer recipe's) are left out."""
    nested = {"grpo": GRPOConfig, "corpus": data.CorpusConfig, "r1": R1Config}
    known = {f.name for f in fields(TrainConfig)} - set(nested)
    kwargs = {k: v for k, v in saved.items() if k in known}
    for name, config_class in nested.items():
        if isinstance(saved.get(name), dict):
            kwargs[name] = config_class(**{f.name: saved[name][f.name] for f in fields(config_class)
                                           if f.name in saved[name]})
    return TrainConfig(**kwargs)


def load_teacher(folder, students, device):
    """-> (teacher model, its TrainConfig, the checkpoint's name, the RL steps it got). Stops with a clear
    message for a folder without a teacher checkpoint or config, and for a teacher whose tokenizer differs
    from the students' (its vocab_size, or its tokenizer fingerprint where the checkpoint records one)."""
    if not os.path.isdir(folder):
        raise SystemExit(f"--teacher {folder}: no such folder (give the --out-dir of a train.py run)")
    name = next((n for n in TEACHER_CHECKPOINTS if os.path.exists(os.path.join(folder, n))), None)
    if name is None:
        raise SystemExit(f"--teacher {folder}: no teacher checkpoint ({' or '.join(TEACHER_CHECKPOINTS)}) in it; "
                         "finish its train.py run first (python train.py --out-dir ... --resume)")
    try:
        ckpt = load_checkpoint(os.path.join(folder, name), device)
    except (FileNotFoundError, RuntimeError) as err:
        raise SystemExit(f"--teacher: {err}") from None
    saved = ckpt.get("train_config")
    metrics_path = os.path.join(folder, "metrics.jsonl")
    if saved is None and os.path.exists(metrics_path):  # the run's first row holds its config
        with open(metrics_path) as f:
            first = json.loads(f.readline() or "{}")
        saved = first.get("config") if first.get("stage") == "config" else None
    if saved is None:
        raise SystemExit(f"--teacher {folder}: {name} holds no train_config and metrics.jsonl has no config row; "
                         "the students' token budget and RL steps cannot be matched to the teacher's")
    teacher_cfg = train_config_from(saved)
    model = ckpt["model"]
    for preset in students:
        vocab = make_config(preset).vocab_size
        if model.cfg.vocab_size != vocab:
            raise SystemExit(f"the teacher's vocab_size {model.cfg.vocab_size} differs from student {preset}'s "
                             f"{vocab}: its samples are token ids of another tokenizer; distil only between "
                             "models of the same tokenizer")
    if "tokenizer_sha256" in ckpt and ckpt["tokenizer_sha256"] != tokenizer_sha256():
        raise SystemExit(f"the teacher was trained with another tokenizer (sha256 {ckpt['tokenizer_sha256'][:12]} "
                         f"of its tokenizer file, {tokenizer_sha256()[:12]} of {data.TOKENIZER_FILE}); distil only "
                         "between models of the same tokenizer")
    rl_steps = max(teacher_cfg.rl_steps, ckpt.get("step", 0))  # an R1 recipe may have run more than rl_steps
    return model, teacher_cfg, name, rl_steps


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # atomic: an interrupted write leaves no half file to resume from


def write_jsonl(path, rows):
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def write_json(path, obj):
    write_atomic(path, json.dumps(obj, indent=2))


def collect_students(out_dir, folder="students"):
    """{preset: {"params": n, "seeds": {seed: {method: evaluation}}}} from every student folder's eval.json under
    out_dir/folder: the seeds of every run into this --out-dir, whichever process made them."""
    students = {}
    root = os.path.join(out_dir, folder)
    for preset in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        seeds = {}
        for name in sorted(os.listdir(os.path.join(root, preset))):
            path = os.path.join(root, preset, name, "eval.json")
            if name.startswith("seed") and os.path.exists(path):
                seeds[name[len("seed"):]] = json.load(open(path))
        if seeds:
            students[preset] = {"params": Transformer(make_config(preset)).num_params(), "seeds": seeds}
    return students

# -----------------------------------------------------------------------------
# A student: each stage writes its checkpoint, and is skipped when the checkpoint is there


class Student:
    def __init__(self, preset, seed, cfg: DistillConfig, teacher_cfg: TrainConfig, rl_steps, device, out_dir,
                 reflect_scale=1.0):
        self.dir = os.path.join(out_dir, students_folder(reflect_scale), preset, f"seed{seed}")
        os.makedirs(self.dir, exist_ok=True)
        self.paths = {n: os.path.join(self.dir, n) for n in
                      ("metrics.jsonl", "aha.jsonl", "eval.json", "pretrain.pt", "base.pt", "rl.pt",
                       "distilled_sft.pt", "distilled.pt", "distilled_rl.pt")}
        # the teacher's recipe with the student's preset and seed: the same corpus (its reflect share scaled),
        # token budget and GRPO settings; resume=True makes run_rl continue from the stage's checkpoint
        self.cfg = replace(teacher_cfg, preset=preset, seed=seed, out_dir=self.dir, resume=True, rl_steps=rl_steps,
                           device=str(device), corpus=student_corpus(teacher_cfg.corpus, reflect_scale))
        self.sft_cfg = replace(cfg.sft, seed=seed)
        self.distill_rl_steps, self.device = cfg.distill_rl_steps, device
        self.train_rows = data.problem_rows("train", seed=seed, path=teacher_cfg.train_data)  # as train.py's RL

    def log(self, row):
        with open(self.paths["metrics.jsonl"], "a") as f:
            f.write(json.dumps(row) + "\n")

    def load(self, name):
        return load_checkpoint(self.paths[name], self.device)["model"]

    def save(self, name, model, **extra):
        save_checkpoint(self.paths[name], model, stage=name[:-3],
                        train_config=asdict(self.cfg), **extra)

    def base(self):
        """Pretrain from scratch, continuing from pretrain.pt after an interruption (base.pretrain_base)."""
        if os.path.exists(self.paths["base.pt"]):
            return
        torch.manual_seed(self.cfg.seed)
        pretrain_base(self.cfg, self.device, self.log, self.paths)

    def rl(self, stage, init, steps, grpo_cfg=None):
        """GRPO (grpo_cfg, default the teacher's R1-Zero settings) from checkpoint `init` for `steps` steps into
        stage.pt; run_rl resumes from stage.pt itself."""
        if self.finished(stage, steps):
            return
        model = self.load(init)
        run_rl(model, self.cfg, self.device, self.log, self.paths, self.train_rows, stage=stage, steps=steps,
               grpo_cfg=grpo_cfg)
        if not steps:  # nothing to train: the stage's model is its init
            self.save(stage + ".pt", model, step=0)

    def distilled(self, teacher_jsonl, teacher_sha):
        """SFT of the base student on the teacher's samples, continuing from distilled_sft.pt if interrupted."""
        if os.path.exists(self.paths["distilled.pt"]):
            return
        examples = load_examples(teacher_jsonl)
        start, opt_state = 0, None
        if os.path.exists(self.paths["distilled_sft.pt"]):
            ckpt = load_checkpoint(self.paths["distilled_sft.pt"], self.device)
            if ckpt["sft_config"] != asdict(self.sft_cfg) or ckpt["data_sha"] != teacher_sha:
                raise SystemExit(f"cannot resume {self.paths['distilled_sft.pt']}: it was fine-tuned with other "
                                 "SFT settings or teacher data; delete it to start this SFT afresh")
            model, start, opt_state = ckpt["model"], ckpt["step"], ckpt["opt"]
        else:
            model = self.load("base.pt")
        drop_rows_from([self.paths["metrics.jsonl"]], start, ["sft", "sft_data"])  # the steps redone from `start`

        def save(step, opt):
            save_checkpoint(self.paths["distilled_sft.pt"], model, stage="sft", step=step, opt=opt.state_dict(),
                            sft_config=asdict(self.sft_cfg), data_sha=teacher_sha)

        sft(model, examples, self.sft_cfg, self.device, self.log, save, start, opt_state)
        self.save("distilled.pt", model, sft_config=asdict(self.sft_cfg), data_sha=teacher_sha)

    def finished(self, stage, steps):
        """Whether the RL stage's checkpoint holds all its steps."""
        path = self.paths[stage + ".pt"]
        return os.path.exists(path) and load_checkpoint(path)["step"] >= steps

    def run(self, teacher_jsonl, teacher_sha, provenance):
        """The four stages, each skipped once made. A start with work left logs a config row first, as train.py's
        starts do: the student's recipe, and the commit, command and device of the process (`provenance`)."""
        if not self.finished("distilled_rl", self.distill_rl_steps):
            self.log({"stage": "config", "config": asdict(self.cfg), "torch": torch.__version__, **provenance})
        self.base()
        self.rl("rl", "base.pt", self.cfg.rl_steps)
        self.distilled(teacher_jsonl, teacher_sha)
        # RL after SFT, as R1's stage 4: a student fine-tuned on answers that end in a hit tries on where it cannot
        # solve, repeating candidates, and R1-Zero's GRPO at temperature 1 lets those loops grow; stage 4's
        # settings (config.R1Config) punish them and sample nearer the evaluation's temperature
        self.rl("distilled_rl", "distilled.pt", self.distill_rl_steps, self.cfg.r1.final_rl_config(self.cfg.grpo))

# -----------------------------------------------------------------------------
# Results


def plot(results, out_png):
    """Held-out pass@1 vs student parameters, one panel per student corpus (the teacher's, then each other reflect
    scale): one line per method through the seeds' mean, each seed a dot; the teacher as a line."""
    import matplotlib
    matplotlib.use("Agg")  # a file, no display
    import matplotlib.pyplot as plt
    others = sorted(results.get("students_by_reflect_scale", {}).items(), key=lambda item: -float(item[0]))
    corpora = [("the teacher's corpus", results.get("students", {}))] + [
        (f"the teacher's corpus with {float(scale):g}x the reflect share", students) for scale, students in others]
    corpora = [(title, students) for title, students in corpora if students]
    fig, axes = plt.subplots(1, len(corpora), figsize=(6 * len(corpora), 4), sharey=True, squeeze=False)
    for ax, (title, students) in zip(axes[0], corpora):
        plot_panel(ax, results, students, title)
    axes[0][0].set_ylabel("held-out pass@1")
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)


def plot_panel(ax, results, students, title):
    sizes = sorted(students.items(), key=lambda item: item[1]["params"])
    for method in METHODS:
        means, seeds = [], []
        for _, student in sizes:
            scores = [evals[method]["pass@1"] for evals in student["seeds"].values() if method in evals]
            if scores:
                means.append((student["params"], sum(scores) / len(scores)))
                seeds += [(student["params"], score) for score in scores]
        if means:
            line, = ax.plot(*zip(*means), marker="o", label=method.replace("_", "+"))
            ax.scatter(*zip(*seeds), color=line.get_color(), alpha=0.35, s=14)  # seeds can differ a lot
    if "teacher" in results:
        ax.axhline(results["teacher"]["pass@1"], color="black", linestyle="--",
                   label=f"teacher ({results['teacher_checkpoint']})")
    ax.set_xscale("log")
    ax.set_xlabel("student parameters")
    ax.set_title(f"distillation vs RL on the student (R1 sec. 4.1):\nstudents pretrained on {title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()


def changed_settings(old, new):
    """The settings (dotted names) that differ between two asdict(DistillConfig)s, except FREE_TO_CHANGE."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, prefix + k + ".") if isinstance(v, dict) else {prefix + k: v})
        return out
    old, new = flat(old), flat(new)
    return sorted(k for k in old.keys() | new.keys()
                  if k not in FREE_TO_CHANGE and json.dumps(old.get(k)) != json.dumps(new.get(k)))


def run(cfg: DistillConfig):
    cfg.validate()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but no CUDA device is available")
    device = torch.device(cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    teacher, teacher_cfg, teacher_name, teacher_rl_steps = load_teacher(cfg.teacher, cfg.students, device)
    rl_steps = cfg.rl_steps or teacher_rl_steps
    for scale in cfg.student_reflect_scales:
        student_corpus(teacher_cfg.corpus, scale)  # stops now, before any work, if a scale makes no valid corpus
    if rl_steps < teacher_rl_steps:
        raise SystemExit(f"--rl-steps {rl_steps}: the RL baseline must get at least as many RL steps as the "
                         f"teacher got ({teacher_rl_steps}), or it is no match for it")
    for preset in cfg.students:
        max_len = make_config(preset).max_seq_len
        for flag, n in (("the teacher's --pretrain-seq-len", teacher_cfg.pretrain_seq_len),
                        ("--sft-seq-len", cfg.sft.seq_len)):
            if n > max_len:
                raise SystemExit(f"{flag} {n} is longer than student {preset}'s max_seq_len {max_len}")
    eval_problems = cfg.eval_problems or teacher_cfg.eval_problems
    eval_samples = cfg.eval_samples or teacher_cfg.eval_samples
    if not eval_problems:
        raise SystemExit("the teacher ran with --eval-problems 0: give --eval-problems, the comparison needs some")
    out_dir = cfg.out_dir or os.path.join(cfg.teacher, "distill")
    os.makedirs(out_dir, exist_ok=True)
    results_path, teacher_jsonl = os.path.join(out_dir, "distill.json"), os.path.join(out_dir, "teacher.jsonl")
    # what is made once for all students has a file of its own, written by whichever process makes it first, so that
    # processes started later (other seeds, other GPUs) read it rather than make it again
    rejection_path = os.path.join(out_dir, "rejection.json")
    teacher_eval_path = os.path.join(out_dir, "teacher_eval.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    if results:
        changed = changed_settings(results["config"], asdict(cfg))
        if changed:
            raise SystemExit(f"{out_dir} holds a comparison made with other settings ({', '.join(changed)}); "
                             "give another --out-dir, or the same settings to resume it")
    results.update({"config": asdict(cfg), "teacher_checkpoint": teacher_name, "teacher_rl_steps": teacher_rl_steps,
                    "rl_steps": rl_steps, "tokenizer_sha256": tokenizer_sha256(), "commit": git_commit(),
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "command": shlex.join(["python", "distill.py", *sys.argv[1:]])})

    def save_results():
        write_json(results_path, results)

    # the teacher's held-out problems (train.py draws them so) and its own evaluation protocol
    test_rows = data.problem_rows("test", eval_problems, teacher_cfg.seed, teacher_cfg.eval_data)

    def evaluate_model(model):
        return evaluate(model, test_rows, eval_samples, teacher_cfg.grpo.max_new_tokens,
                        teacher_cfg.eval_temperature, teacher_cfg.eval_top_p)

    # 1. the teacher's data, once
    if not os.path.exists(teacher_jsonl):
        rows = data.problem_rows("train", cfg.reject_problems or None, cfg.rejection.seed, teacher_cfg.train_data)
        try:
            examples, stats = rejection_sample(teacher, rows, cfg.rejection)
        except ValueError as err:
            raise SystemExit(f"teacher data: {err}") from None
        write_json(rejection_path, stats)  # before teacher.jsonl: its existence says both are done
        write_jsonl(teacher_jsonl, examples)
        print("teacher data:", json.dumps(stats))
    if not os.path.exists(teacher_eval_path):
        evaluation = evaluate_model(teacher)
        write_json(teacher_eval_path, evaluation)
        print("teacher:", {k: v for k, v in evaluation.items() if not k.endswith("example")})
    results.update(rejection=json.load(open(rejection_path)), teacher=json.load(open(teacher_eval_path)))
    save_results()
    del teacher
    teacher_sha = hashlib.sha256(open(teacher_jsonl, "rb").read()).hexdigest()

    # 2-5. each student size and seed: base, RL baseline, distilled, distilled+RL; each evaluated once made, into
    # the student's own eval.json, so that runs of other seeds into this --out-dir (one per GPU, say, started once
    # teacher_eval.json exists) add theirs without overwriting each other's
    for scale in cfg.student_reflect_scales:
        for preset in cfg.students:
            for seed in cfg.seeds:
                student = Student(preset, seed, cfg, teacher_cfg, rl_steps, device, out_dir, scale)
                student.run(teacher_jsonl, teacher_sha, {k: results[k] for k in ("commit", "command", "device")})
                eval_path = student.paths["eval.json"]
                evals = json.load(open(eval_path)) if os.path.exists(eval_path) else {}
                for method in METHODS:
                    if method not in evals:
                        evals[method] = evaluate_model(student.load(method + ".pt"))
                        write_json(eval_path, evals)
                        print(f"{students_folder(scale)}/{preset} seed {seed} {method}:",
                              {k: v for k, v in evals[method].items() if not k.endswith("example")})
    results["students"] = collect_students(out_dir)
    # the other corpora's students of every run into this --out-dir, by reflect scale
    results["students_by_reflect_scale"] = {
        name[len("students_reflect"):]: collect_students(out_dir, name) for name in sorted(os.listdir(out_dir))
        if name.startswith("students_reflect") and os.path.isdir(os.path.join(out_dir, name))}
    save_results()
    plot(results, os.path.join(out_dir, "distill.png"))
    print(f"done; results in {results_path}")
    return results

# -----------------------------------------------------------------------------
# CLI


def parse_args(argv=None) -> DistillConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = DistillConfig()
    parser.add_argument("--teacher", required=True, help="the --out-dir of a finished train.py run")
    parser.add_argument("--students", nargs="+", default=list(defaults.students), help="model presets")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(defaults.seeds))
    parser.add_argument("--student-reflect-scales", nargs="+", type=float,
                        default=list(defaults.student_reflect_scales),
                        help="one set of students per scale, pretrained on the teacher's corpus with p_reflect times "
                             "the scale (1: the same corpus; 0.1: a base that holds less of the teacher's reasoning)")
    add_config_flags(parser, DistillConfig, skip=("teacher", "students", "seeds", "student_reflect_scales", "sft",
                                                  "rejection"))
    # the nested configs' fields get a prefix: --sft-lr sets sft.lr, --reject-temperature sets rejection.temperature
    nested = {"sft": (SFTConfig, "sft_"), "rejection": (RejectionConfig, "reject_")}
    for name, (config_class, prefix) in nested.items():  # (SFT's seed is each student's seed)
        add_config_flags(parser, config_class, prefix, skip=("seed",) if name == "sft" else (),
                         values=getattr(defaults, name))
    args = vars(parser.parse_args(argv))
    sub = {name: config_class(**{f.name: args.pop(prefix + f.name) for f in fields(config_class)
                                 if prefix + f.name in args})
           for name, (config_class, prefix) in nested.items()}
    cfg = DistillConfig(**{**args, "students": tuple(args["students"]), "seeds": tuple(args["seeds"]),
                           "student_reflect_scales": tuple(args["student_reflect_scales"])}, **sub)
    try:
        cfg.validate()
    except ValueError as err:
        parser.error(str(err))
    return cfg


def main(argv=None):
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
