"""
The DeepSeek-R1 recipe (--recipe r1, arXiv:2501.12948 sec. 2.3): the four stages after the base model, each
resumable. 1. cold-start SFT on readable long CoTs; 2. reasoning RL with the language-consistency reward;
3. rejection sampling of the stage-2 model plus non-reasoning data, then SFT of the base model; 4. RL for all
scenarios. The settings are config.R1Config (--r1-... flags).
"""

import json
import os
import random
import time
from dataclasses import asdict, replace

import data
import distributed
import rewards
from checkpoint import drop_rows_from, load_checkpoint, save_checkpoint
from config import TrainConfig
from rejection import RejectionConfig, rejection_sample
from rl import run_rl
from sft import SFTConfig, example_from_text, sft
from template import THINK


def coldstart_examples(cfg: TrainConfig):
    """Sec. 2.3.1's cold-start data at our scale: "readable" long CoTs written by the corpus writer in its
    reflect style (try a candidate, say "Wait" on a miss, verify the hit), English only, kept only when the final
    answer is right, on "pretrain"-split problems (never an answer to an RL problem)."""
    style = replace(cfg.corpus, p_try=0.0, p_reflect=1.0, p_second_language_reflect=0.0, p_second_language_other=0.0)
    rng, problems, n = random.Random(cfg.seed), data.countdown_problems("pretrain"), cfg.r1.coldstart_examples
    examples, written = [], 0
    while len(examples) < n and written < 20 * n:  # a reflect document ends right unless it runs out of attempts
        numbers, target = rng.choice(problems)
        row = data.countdown_row(numbers, target, rng)
        response = data.countdown_response(rng, (numbers, target), style)
        written += 1
        if rewards.score(THINK + response, row).accuracy == 1:
            examples.append(example_from_text(data.make_prompt(row["question"]), response))
    if not examples:
        raise ValueError(f"no valid cold-start example: none of {written} reflect-style answers ended correct "
                         f"(CorpusConfig.p_correct {cfg.corpus.p_correct}, CorpusConfig.max_attempts "
                         f"{cfg.corpus.max_attempts})")
    return examples


def non_reasoning_examples(n, seed):
    """Sec. 2.3.3's non-reasoning data at our scale: "Compute ..." questions answered directly, with an empty
    think ("for simpler queries ... we do not provide a CoT in response")."""
    rng, examples = random.Random(seed), []
    for _ in range(n):
        e = data.arithmetic_expression(rng)
        question = data.arithmetic_question(e.text)
        examples.append(example_from_text(data.make_prompt(question), data.answer_turn(e.value)))
    return examples


def rejection_sft_examples(model, cfg: TrainConfig, paths, log):
    """Sec. 2.3.3's SFT set: the stage-2 model's finished, correct, single-language, not overlong answers to RL
    problems (rejection.py), plus non-reasoning examples (--r1-non-reasoning-fraction of the set). The kept
    answers go to rejection.jsonl, so that a resumed run trains on the same set without sampling again.
    Rank 0 alone samples (rejection.py is single-process); the other ranks wait, then read the file."""
    path, ok, err = paths["rejection.jsonl"], 1.0, None
    if distributed.is_main() and not (cfg.resume and os.path.exists(path)):
        drop_rows_from([paths["metrics.jsonl"]], 0, ["rejection"])  # the sampling is redone: its row goes
        rows = data.problem_rows("train", cfg.r1.rejection_problems, cfg.seed, cfg.train_data)
        rej_cfg = RejectionConfig(samples_per_prompt=cfg.r1.rejection_samples_per_prompt,
                                  max_new_tokens=cfg.grpo.max_new_tokens, temperature=cfg.grpo.temperature,
                                  keep_per_prompt=cfg.r1.rejection_keep_per_prompt, seed=cfg.seed,
                                  max_tokens=max(1, int(cfg.r1.rejection_max_tokens_frac * cfg.grpo.max_new_tokens)))
        try:
            kept, stats = rejection_sample(model, rows, rej_cfg)
            log({"stage": "rejection", **stats})
            with open(path + ".tmp", "w") as f:
                f.writelines(json.dumps(example) + "\n" for example in kept)
            os.replace(path + ".tmp", path)
        except ValueError as error:
            ok, err = 0.0, error
    if not distributed.all_reduce_metrics({"ok": ok}, "min")["ok"]:  # also the other ranks' wait for the file
        raise SystemExit(f"rejection sampling (R1 stage 3): {err or 'failed on rank 0'}")
    examples = [example_from_text(data.make_prompt(obj["question"]), obj["completion"])
                for _, obj in data.jsonl_objects(path)]
    f = cfg.r1.non_reasoning_fraction
    return examples + non_reasoning_examples(round(f / (1 - f) * len(examples)), cfg.seed)


def all_scenarios_rows(cfg: TrainConfig, train_rows):
    """Sec. 2.3.4's prompts "from diverse scenarios", rule-rewarded: the RL problems plus "Compute ..."
    arithmetic problems (--r1-final-arithmetic-fraction of all)."""
    f, rng = cfg.r1.final_arithmetic_fraction, random.Random(cfg.seed + 1)
    arithmetic = [data.arithmetic_expression(rng) for _ in range(round(f / (1 - f) * len(train_rows)))]
    return train_rows + [data.arithmetic_row(data.arithmetic_question(e.text), e.value) for e in arithmetic]


def run_sft(model, examples_fn, sft_cfg: SFTConfig, cfg: TrainConfig, device, log, paths, stage):
    """SFT of `model` on examples_fn()'s examples as `stage`, checkpointed in paths[stage + ".pt"] (step and
    optimizer every sft_cfg.checkpoint_every steps; finished=True at the end). With --resume, a finished stage is
    skipped (examples_fn is not even called) and an interrupted one continues. Returns the fine-tuned model.
    Bad data (no example, none that fits) stops the run with a message naming the stage."""
    main_rank, ckpt_path = distributed.is_main(), paths[stage + ".pt"]
    say = print if main_rank else (lambda *args: None)
    start, opt_state = 0, None
    if cfg.resume and os.path.exists(ckpt_path):
        ckpt = load_checkpoint(ckpt_path, device)
        if ckpt.get("finished"):
            say(f"resumed the finished {stage} model from {ckpt_path}")
            return ckpt["model"]
        model, start, opt_state = ckpt["model"], ckpt["step"], ckpt["opt"]
        say(f"resumed {stage} at step {start}")
    if main_rank:  # the steps from `start` on are redone (from 0 without the stage's checkpoint: its data row too)
        drop_rows_from([paths["metrics.jsonl"]], start, [stage, stage + "_data"])

    def stage_log(row):  # sft.py logs "sft" and "sft_data" rows: name them after the stage
        log({**row, "stage": stage if row["stage"] == "sft" else stage + "_data"})

    def save(step, opt):
        if main_rank:
            save_checkpoint(ckpt_path, model, stage=stage, step=step, opt=opt.state_dict(), finished=False)

    try:
        sft(model, examples_fn(), sft_cfg, device, stage_log, save, start, opt_state)
    except ValueError as err:
        raise SystemExit(f"{stage} SFT: {err}") from None
    if main_rank:
        save_checkpoint(ckpt_path, model, stage=stage, finished=True, train_config=asdict(cfg))
    return model


def run_r1(model, cfg: TrainConfig, device, log, paths, evaluate_as, train_rows):
    """DeepSeek-R1's four stages after the base model, each resumable, on the RL problems train_rows.
    evaluate_as(name, model, t0) evaluates each stage's model on the held-out problems and records the stage's
    wall time since t0."""
    r1 = cfg.r1

    def sft_config(epochs, lr):
        return SFTConfig(epochs=epochs, lr=lr, batch_size=r1.sft_batch_size, seq_len=r1.sft_seq_len,
                         log_every=cfg.log_every, checkpoint_every=r1.sft_checkpoint_every, seed=cfg.seed)

    language = replace(cfg.grpo, language_weight=r1.language_weight)  # sec. 2.3.2, kept in sec. 2.3.4
    # 1. cold start (sec. 2.3.1): SFT of the base model on readable long CoTs
    t0 = time.time()
    model = run_sft(model, lambda: coldstart_examples(cfg), sft_config(r1.coldstart_epochs, r1.coldstart_lr),
                    cfg, device, log, paths, "coldstart")
    evaluate_as("coldstart", model, t0)
    # 2. reasoning-oriented RL (sec. 2.3.2) on the cold-started model, with the language-consistency reward
    t0 = time.time()
    run_rl(model, cfg, device, log, paths, train_rows, stage="rl_reasoning", grpo_cfg=language,
           steps=r1.reasoning_rl_steps)
    evaluate_as("rl_reasoning", model, t0)
    # 3. rejection sampling from the stage-2 model + non-reasoning data, then SFT of the *base* model for two
    #    epochs (sec. 2.3.3: R1 restarts from DeepSeek-V3-Base, not from the RL model)
    t0 = time.time()
    reasoner = model
    model = run_sft(load_checkpoint(paths["base.pt"], device)["model"],
                    lambda: rejection_sft_examples(reasoner, cfg, paths, log),
                    sft_config(r1.rsft_epochs, r1.rsft_lr), cfg, device, log, paths, "rsft")
    evaluate_as("rsft", model, t0)
    # 4. RL for all scenarios (sec. 2.3.4): Countdown and arithmetic prompts, rule rewards, language reward kept
    t0 = time.time()
    run_rl(model, cfg, device, log, paths, all_scenarios_rows(cfg, train_rows), stage="rl_final",
           grpo_cfg=language, steps=r1.final_rl_steps)
    evaluate_as("r1", model, t0)
    return model
