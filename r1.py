"""
The DeepSeek-R1 recipe (--recipe r1, arXiv:2501.12948 sec. 2.3): the four stages after the base model, each
resumable. 1. cold-start SFT on readable long CoTs: R1-Zero's own correct answers made readable (readable.py;
R1-Zero's RL runs first, as --recipe r1-zero runs it), or the corpus writer's; 2. reasoning RL with the
language-consistency reward; 3. rejection sampling of the stage-2 model plus non-reasoning data, then SFT of the
base model (or of the stage-2 model); 4. RL for all scenarios. The settings are config.R1Config (--r1-... flags).
"""

import json
import os
import random
import time
from dataclasses import asdict, replace

import data
import distributed
import readable
import rewards
from checkpoint import drop_rows_from, load_checkpoint, save_checkpoint
from config import TrainConfig
from rejection import RejectionConfig, rejection_sample
from rl import run_rl
from sft import SFTConfig, example_from_text, sft
from template import THINK


def corpus_writer_answers(cfg: TrainConfig, n, seed, give_up=False):
    """n answers of the corpus writer in its reflect style (try a candidate, say "Wait" on a miss, verify the hit),
    English only, to "pretrain"-split problems (never an answer to an RL problem), as (row, completion) pairs: the
    ones that end right, or with give_up those whose every attempt missed (the last candidate is answered).
    Returns (pairs, answers written)."""
    style = replace(cfg.corpus, p_try=0.0, p_reflect=1.0, p_second_language_reflect=0.0, p_second_language_other=0.0,
                    p_correct=0.0 if give_up else cfg.corpus.p_correct)
    rng, problems, pairs, written = random.Random(seed), data.countdown_problems("pretrain"), [], 0
    while len(pairs) < n and written < 20 * n:  # a reflect document ends right unless it runs out of attempts
        numbers, target = rng.choice(problems)
        row = data.countdown_row(numbers, target, rng)
        response = data.countdown_response(rng, (numbers, target), style)
        written += 1
        if rewards.score(THINK + response, row).accuracy == (0 if give_up else 1):
            pairs.append((row, response))
    return pairs, written


def share_of(fraction, n):
    """How many items to add to n others so that they make `fraction` of the whole."""
    return round(fraction / (1 - fraction) * n)


def give_ups(cfg: TrainConfig, fraction, n_answers, seed):
    """The corpus writer's give-ups (corpus_writer_answers with give_up) that make `fraction` of a set of n_answers
    answers plus them, as (row, completion) pairs."""
    return corpus_writer_answers(cfg, share_of(fraction, n_answers), seed, give_up=True)[0]


def r1zero_answers(zero, cfg: TrainConfig):
    """Sec. 2.3.1's "DeepSeek-R1-Zero outputs in a readable format": the R1-Zero model's finished, correct answers
    to "pretrain"-split problems, sampled as its RL samples them (rejection.py, any language kept), each rewritten
    by readable.readable_answer (English, no repeated or invalid attempts, steps recomputed, a summary; the answer
    itself unchanged), distinct texts only, at most --r1-coldstart-examples. Returns ((row, readable completion,
    R1-Zero's original) triples, stats). Raises ValueError if R1-Zero gets none right."""
    r1, k = cfg.r1, cfg.r1.coldstart_r1zero_samples
    rows = data.countdown_rows("pretrain", r1.coldstart_r1zero_problems, cfg.seed)
    rej_cfg = RejectionConfig(samples_per_prompt=k, keep_per_prompt=k, max_new_tokens=cfg.grpo.max_new_tokens,
                              temperature=cfg.grpo.temperature, min_language_consistency=0.0,
                              max_tokens=cfg.grpo.max_new_tokens, seed=cfg.seed)
    try:
        kept, sampled = rejection_sample(zero, rows, rej_cfg)
    except ValueError as err:
        raise ValueError(f"R1-Zero (rl.pt, {cfg.rl_steps} RL steps) has no correct answer to make readable: {err}. "
                         "Give R1-Zero more RL steps (--rl-steps), or use --r1-coldstart-source oracle") from None
    by_question = {row["question"]: row for row in rows}
    pairs, seen, counts = [], set(), dict(unreadable=0, duplicate=0, mixed_language=0, repeated_attempts=0)
    for example in kept:
        row, original = by_question[example["question"]], example["completion"]
        completion = readable.readable_answer(original, row)
        reward = None if completion is None else rewards.score(THINK + completion, row)
        counts["mixed_language"] += rewards.language_consistency(original) < 1
        counts["repeated_attempts"] += readable.repeated_candidates(original) > 0
        if reward is None or reward.accuracy < 1 or reward.language_consistency < 1:
            counts["unreadable"] += 1  # the rules found no valid answer to rewrite (a guard: not seen in tests)
        elif (row["question"], completion) in seen:
            counts["duplicate"] += 1
        else:
            seen.add((row["question"], completion))
            pairs.append((row, completion, original))
    stats = {"r1zero_sampled": sampled["sampled"], "r1zero_correct": sampled["correct"],
             "r1zero_kept": sampled["kept"], "r1zero_mean_kept_tokens": sampled["mean_kept_tokens"],
             **{f"r1zero_{name}": n for name, n in counts.items()}}
    return pairs[:r1.coldstart_examples], stats


def length_stats(lengths):
    """Mean, quartiles, p90, p99 and max of a list of token counts (the cold-start set's report)."""
    ordered = sorted(lengths)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return {"mean": sum(ordered) / len(ordered), "p25": at(0.25), "p50": at(0.5), "p75": at(0.75), "p90": at(0.9),
            "p99": at(0.99), "max": ordered[-1]} if ordered else {}


def make_coldstart_set(cfg: TrainConfig, zero=None):
    """The cold-start set as {"question", "completion", "kind"[, "original"]} dicts, and its stats: the source's
    answers (--r1-coldstart-source: R1-Zero's made readable, or the corpus writer's), plus give-ups
    (--r1-coldstart-giveup-fraction of the set, written by the corpus writer, in the source's format), without those
    longer than --r1-coldstart-max-tokens. Raises ValueError if none is left."""
    r1 = cfg.r1
    if r1.coldstart_source == "r1zero":
        answers, stats = r1zero_answers(zero, cfg)
    else:
        pairs, written = corpus_writer_answers(cfg, r1.coldstart_examples, cfg.seed)
        answers, stats = [(row, completion, None) for row, completion in pairs], {"written": written}
        if not answers:
            raise ValueError(f"no valid cold-start example: none of {written} reflect-style answers ended correct "
                             f"(CorpusConfig.p_correct {cfg.corpus.p_correct}, CorpusConfig.max_attempts "
                             f"{cfg.corpus.max_attempts})")
    stops = give_ups(cfg, r1.coldstart_giveup_fraction, len(answers), cfg.seed + 2)
    if r1.coldstart_source == "r1zero":  # in the readable format too
        stops = [(row, readable.readable_answer(THINK + completion, row)) for row, completion in stops]
        stops = [(row, completion) for row, completion in stops if completion is not None]
    cap = r1.coldstart_max_tokens or float("inf")
    examples, lengths, over = [], [], []
    for kind, items in (("answer", answers), ("give_up", [(row, c, None) for row, c in stops])):
        for row, completion, original in items:
            n = len(example_from_text(data.make_prompt(row["question"]), completion)[1])
            (over if n > cap else lengths).append(n)
            if n <= cap:
                examples.append({"question": row["question"], "completion": completion, "kind": kind,
                                 **({"original": original} if original else {})})
    stats.update(source=r1.coldstart_source, examples=len(examples), give_ups=sum(e["kind"] == "give_up"
                 for e in examples), max_tokens=r1.coldstart_max_tokens, dropped_over_max_tokens=len(over),
                 tokens=length_stats(lengths), dropped_tokens=length_stats(over))
    if not examples:
        raise ValueError(f"no valid cold-start example: all {len(over)} are longer than R1Config.coldstart_max_tokens "
                         f"{cap}")
    return examples, stats


def examples_made_once(path, stage, make, cfg: TrainConfig, paths, log, failure):
    """The SFT examples of a stage's data file, made once: rank 0 calls make() -> (examples as {"question",
    "completion", ...} dicts, stats) unless a resumed run already has the file at `path`, logs the stats as a `stage`
    row (an earlier, unfinished try's row goes) and writes the file atomically; the other ranks wait (make() is
    single-process), then every rank reads the file. A ValueError from make() stops the run with `failure: why`."""
    ok, err = 1.0, None
    if distributed.is_main() and not (cfg.resume and os.path.exists(path)):
        drop_rows_from([paths["metrics.jsonl"]], 0, [stage])
        try:
            examples, stats = make()
            log({"stage": stage, **stats})
            with open(path + ".tmp", "w") as f:
                f.writelines(json.dumps(example) + "\n" for example in examples)
            os.replace(path + ".tmp", path)
        except ValueError as error:
            ok, err = 0.0, error
    if not distributed.all_reduce_metrics({"ok": ok}, "min")["ok"]:  # also the other ranks' wait for the file
        raise SystemExit(f"{failure}: {err or 'failed on rank 0'}")
    return [example_from_text(data.make_prompt(obj["question"]), obj["completion"])
            for _, obj in data.jsonl_objects(path)]


def coldstart_examples(cfg: TrainConfig, paths, log, zero=None):
    """Sec. 2.3.1's cold-start data (make_coldstart_set), written to coldstart.jsonl so that a resumed run trains on
    the same set without making it again, its length distribution logged (a "coldstart_set" row)."""
    return examples_made_once(paths["coldstart.jsonl"], "coldstart_set", lambda: make_coldstart_set(cfg, zero), cfg,
                              paths, log, f"coldstart SFT ({cfg.r1.coldstart_source} source)")


def coldstart_made(cfg: TrainConfig, paths):
    """Whether a resumed run already has its cold-start set (or the finished cold-start model)."""
    if not cfg.resume:
        return False
    if os.path.exists(paths["coldstart.jsonl"]):
        return True
    return os.path.exists(paths["coldstart.pt"]) and bool(load_checkpoint(paths["coldstart.pt"]).get("finished"))


def non_reasoning_examples(n, seed):
    """Sec. 2.3.3's non-reasoning data at our scale: "Compute ..." questions answered with the short chain of
    thought the corpus writes (its steps, no search, no reflection): sec. 2.3.3 gives such tasks "a potential
    chain-of-thought before answering" and leaves it out only for the simplest queries. A direct answer with an
    empty think is not one of those here: two steps of 2-digit arithmetic are beyond this model without its steps,
    and SFT on direct answers leaves stage 4 starting near 3% accuracy on them."""
    rng, examples = random.Random(seed), []
    for _ in range(n):
        e = data.arithmetic_expression(rng)
        examples.append(example_from_text(data.make_prompt(data.arithmetic_question(e.text)),
                                          data.arithmetic_response(e)))
    return examples


def rejection_sft_examples(model, cfg: TrainConfig, paths, log):
    """Sec. 2.3.3's SFT set: the stage-2 model's finished, correct, single-language, not overlong answers to RL
    problems (rejection.py), plus the corpus writer's give-ups (--r1-rsft-giveup-fraction of the reasoning
    examples), plus non-reasoning examples (--r1-non-reasoning-fraction of the set). The kept answers go to
    rejection.jsonl, so that a resumed run trains on the same set without sampling again."""
    def sample():
        rows = data.problem_rows("train", cfg.r1.rejection_problems, cfg.seed, cfg.train_data)
        rej_cfg = RejectionConfig(samples_per_prompt=cfg.r1.rejection_samples_per_prompt,
                                  max_new_tokens=cfg.grpo.max_new_tokens, temperature=cfg.grpo.temperature,
                                  keep_per_prompt=cfg.r1.rejection_keep_per_prompt, seed=cfg.seed,
                                  max_tokens=max(1, int(cfg.r1.rejection_max_tokens_frac * cfg.grpo.max_new_tokens)))
        return rejection_sample(model, rows, rej_cfg)
    examples = examples_made_once(paths["rejection.jsonl"], "rejection", sample, cfg, paths, log,
                                  "rejection sampling (R1 stage 3)")
    examples += [example_from_text(data.make_prompt(row["question"]), completion)
                 for row, completion in give_ups(cfg, cfg.r1.rsft_giveup_fraction, len(examples), cfg.seed + 3)]
    return examples + non_reasoning_examples(share_of(cfg.r1.non_reasoning_fraction, len(examples)), cfg.seed)


def all_scenarios_rows(cfg: TrainConfig, train_rows):
    """Sec. 2.3.4's prompts "from diverse scenarios", rule-rewarded: the RL problems plus "Compute ..."
    arithmetic problems (--r1-final-arithmetic-fraction of all)."""
    f, rng = cfg.r1.final_arithmetic_fraction, random.Random(cfg.seed + 1)
    arithmetic = [data.arithmetic_expression(rng) for _ in range(share_of(f, len(train_rows)))]
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

    r1_grpo = r1.rl_config(cfg.grpo)  # the language reward of sec. 2.3.2, kept in sec. 2.3.4
    # 0. for a cold start from R1-Zero's outputs: R1-Zero itself, RL from the base into rl.pt, the run that
    #    --recipe r1-zero makes (a folder holding a finished one resumes it at its end), evaluated as "rl"
    zero = None
    if r1.coldstart_source == "r1zero" and not coldstart_made(cfg, paths):
        t0 = time.time()
        zero = load_checkpoint(paths["base.pt"], device)["model"]
        run_rl(zero, cfg, device, log, paths, train_rows)
        evaluate_as("rl", zero, t0)
    # 1. cold start (sec. 2.3.1): SFT of the base model on readable long CoTs
    t0 = time.time()
    model = run_sft(model, lambda: coldstart_examples(cfg, paths, log, zero),
                    sft_config(r1.coldstart_epochs, r1.coldstart_lr), cfg, device, log, paths, "coldstart")
    evaluate_as("coldstart", model, t0)
    # 2. reasoning-oriented RL (sec. 2.3.2) on the cold-started model, with the language-consistency reward (and
    #    the dual clip and the overlong punishment: config.R1Config)
    t0 = time.time()
    run_rl(model, cfg, device, log, paths, train_rows, stage="rl_reasoning", grpo_cfg=r1_grpo,
           steps=r1.reasoning_rl_steps)
    evaluate_as("rl_reasoning", model, t0)
    # 3. rejection sampling from the stage-2 model + non-reasoning data, then SFT of the *base* model for two
    #    epochs (sec. 2.3.3: R1 restarts from DeepSeek-V3-Base, not from the RL model), or with --r1-rsft-from
    #    reasoner of the stage-2 model itself (its samples are drawn before the SFT changes it)
    t0 = time.time()
    reasoner = model
    init = reasoner if r1.rsft_from == "reasoner" else load_checkpoint(paths["base.pt"], device)["model"]
    model = run_sft(init, lambda: rejection_sft_examples(reasoner, cfg, paths, log),
                    sft_config(r1.rsft_epochs, r1.rsft_lr), cfg, device, log, paths, "rsft")
    evaluate_as("rsft", model, t0)
    # 4. RL for all scenarios (sec. 2.3.4): Countdown and arithmetic prompts, rule rewards, language reward kept
    t0 = time.time()
    run_rl(model, cfg, device, log, paths, all_scenarios_rows(cfg, train_rows), stage="rl_final",
           grpo_cfg=r1.final_rl_config(cfg.grpo), steps=r1.final_rl_steps)
    evaluate_as("r1", model, t0)
    return model
