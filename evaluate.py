"""
Evaluation on held-out problems with R1's protocol (arXiv:2501.12948 sec. 3): k samples per problem at
temperature 0.6 and top-p 0.95; pass@1 averaged over the k, and cons@k, the majority vote over the answers'
values. Also the mean response length, reflections per response, language consistency, the format rate (the
share of responses in the template's <think>/<answer> format), and how well the reflections check: the share of
verifications that follow a real hit, and of rejections that reject one (rewards.check_outcomes). Why answers
fail to finish: the share cut at the budget (truncated_rate), the share of answers, and of cut answers, that try
a candidate they tried before (readable.repeated_candidates: loops); and the share of Countdown answers that end
with a true summary line (readable.summary_ok, the format of R1's cold start). Data parallel under torchrun.
"""

from collections import Counter

import torch

import data
import distributed
import engine
import readable
import rewards
from sample import rollouts


def answer_key(text, row):
    """What two answers must share to count as the same vote: the exact value (None if invalid)."""
    answer = rewards.extract_answer(text)
    if answer is None:
        return None
    if row["task"] == "countdown":
        return rewards.countdown_value(answer, row["numbers"])
    return rewards.parse_number(answer)


@torch.no_grad()
def evaluate(model, rows, k, max_new_tokens, temperature, top_p, batch_size=512):
    """Data parallel: each rank answers every world_size-th problem, and the ranks' sums are added up."""
    enc = data.get_tokenizer()
    n_problems = len(rows)
    rows = rows[distributed.rank()::distributed.world_size()]
    batch = rollouts(engine.decoder_for(model), rows, k, max_new_tokens, temperature, top_p, batch_size)
    pass1, cons, lengths, reflections, consistency, formats = [], [], [], [], [], []
    checks = dict.fromkeys(rewards.CHECK_OUTCOMES, 0)
    finish = dict.fromkeys(("repeats", "countdown", "summaries"), 0)
    for j, row in enumerate(rows):
        texts, scores = batch.texts[j * k:(j + 1) * k], batch.scores[j * k:(j + 1) * k]
        pass1.append(sum(s.accuracy for s in scores) / k)
        votes = Counter(key for key in (answer_key(t, row) for t in texts) if key is not None)
        target = row["target"] if row["task"] == "countdown" else rewards.parse_number(row["answer"])
        cons.append(float(bool(votes) and votes.most_common(1)[0][0] == target))
        lengths += [len(enc.encode(t, allowed_special="all")) for t in texts]
        reflections += [s.reflections for s in scores]
        consistency += [s.language_consistency for s in scores]  # against English, the prompts' language
        formats += [s.format for s in scores]
        for text in texts:
            finish["repeats"] += readable.repeated_candidates(text) > 0
            if row["task"] == "countdown":
                finish["countdown"] += 1
                finish["summaries"] += readable.summary_ok(text, row)
                for key, n in rewards.check_outcomes(text, row["target"]).items():
                    checks[key] += n
    stops = set(data.stop_token_ids())
    truncated = [i for i, c in enumerate(batch.completions) if not c or c[-1] not in stops]  # cut at the budget
    finish["truncated"] = len(truncated)
    finish["truncated_repeats"] = sum(readable.repeated_candidates(batch.texts[i]) > 0 for i in truncated)
    sums = distributed.all_reduce_metrics({"pass@1": sum(pass1), "cons": sum(cons), "tokens": sum(lengths),
                                           "reflections": sum(reflections), "consistency": sum(consistency),
                                           "format": sum(formats), **checks, **finish}, "sum")
    verifies, rejects = sums["true_verify"] + sums["false_verify"], sums["true_reject"] + sums["false_reject"]
    return {"pass@1": sums["pass@1"] / n_problems, f"cons@{k}": sums["cons"] / n_problems,
            "mean_response_tokens": sums["tokens"] / (n_problems * k),
            "reflections_per_response": sums["reflections"] / (n_problems * k),
            "language_consistency": sums["consistency"] / (n_problems * k),
            "format_rate": sums["format"] / (n_problems * k),
            # do the reflections check anything? (rewards.check_outcomes; None where there were none)
            "verify_precision": sums["true_verify"] / verifies if verifies else None,
            "false_reject_rate": sums["false_reject"] / rejects if rejects else None,
            "truncated_rate": sums["truncated"] / (n_problems * k),
            "repeat_rate": sums["repeats"] / (n_problems * k),  # answers that try a candidate twice
            "truncated_repeat_rate": sums["truncated_repeats"] / sums["truncated"] if sums["truncated"] else None,
            "summary_rate": sums["summaries"] / sums["countdown"] if sums["countdown"] else None,
            "problems": n_problems, "samples_per_problem": k, "example": batch.texts[0] if batch.texts else None,
            "truncated_example": batch.texts[truncated[0]] if truncated else None}  # what a loop looks like
