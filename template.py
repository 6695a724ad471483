"""
The R1-Zero template (DeepSeek-R1, arXiv:2501.12948, Table 1) and its special tokens: the strings the corpus,
the tokenizer, the sampler, the rewards and the trainers must agree on, written once. It imports nothing, so that
every module can read it: rewards.py too, which data.py imports (data.py builds prompts and the corpus from it).
"""

THINK, THINK_END = "<think>", "</think>"      # the reasoning block; the assistant turn is prefilled with THINK
ANSWER, ANSWER_END = "<answer>", "</answer>"  # the answer block; generation stops at ANSWER_END
TAGS = (THINK, THINK_END, ANSWER, ANSWER_END)
EOT = "<|endoftext|>"                         # ends a corpus document; the other stop token
PAD = "<|pad|>"                               # fills left-padded prompts and right-padded completions

TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>. User: {question} Assistant: " + THINK
)
