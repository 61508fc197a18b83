"""The reserved vocabulary every she_jax tokenizer carries.

Each of these strings is exactly one token in every tokenizer (SentencePiece trained here,
or a local Hugging Face tokenizer extended with them), so the sampler, the CoT parser and
the answer-first scorer can work on ids instead of text.
"""

PAD = "<|pad|>"
EOS = "<|eos|>"
BOS = "<|bos|>"
UNK = "<|unk|>"

# Prompt structure.
QUERY = "<|query|>"
ITEM = "<|item|>"
ANSWER = "<|answer|>"  # last prompt token: the model's output starts after it.

# The five CoT steps (TaoSR1): query understanding, item understanding, category matching,
# attribute matching, relevance judgment.
STEP_NAMES = ("query", "item", "category_match", "attribute_match", "judgment")
STEP_MARKERS = ("<|step1|>", "<|step2|>", "<|step3|>", "<|step4|>", "<|step5|>")

# Labels, best first. Index i of LABELS is class id i everywhere in she_jax.
LABELS = ("L4", "L3", "L2", "L1")
LABEL_TOKENS = ("<|L4|>", "<|L3|>", "<|L2|>", "<|L1|>")
LABEL_NAMES = {"L4": "Excellent", "L3": "Related", "L2": "Mismatch", "L1": "Irrelevant"}

# All reserved tokens other than PAD/EOS/BOS/UNK, in a fixed order.
CONTROL_TOKENS = (QUERY, ITEM, ANSWER) + STEP_MARKERS + LABEL_TOKENS
ALL_SPECIAL = (PAD, EOS, BOS, UNK) + CONTROL_TOKENS
