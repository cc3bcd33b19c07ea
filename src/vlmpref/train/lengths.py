"""The `--max-length` policy: decide for every pair, before training, what the length limit does to it.

A pair becomes two sequences, [prompt | chosen] and [prompt | rejected], the prompt holding the image tokens.
TRL cuts a sequence that is too long at `max_length` from the end (`keep_start`); when the prompt alone is too
long, that cut goes through the image tokens and the model fails ("image features and image tokens do not
match"). So each pair is measured here, with the model's processor, as the trainers tokenize it:

- fits: unchanged;
- an answer too long, `--truncation answer`: kept; both engines cut the answer tokens past `max_length`, as
  TRL does, and the row is counted as cut;
- an answer too long, `--truncation skip`: set aside with its length;
- the prompt alone leaves no room for an answer: set aside with its length, whatever the policy.

No trainer then ever cuts into a prompt.
"""

from __future__ import annotations

from typing import Literal

from tqdm.auto import tqdm

from vlmpref.data import PreferenceData
from vlmpref.train.fast.packing import tokenize_pair

Truncation = Literal["answer", "skip"]


def pair_lengths(row: dict, processor) -> tuple[int, int, int]:
    """Tokens of the prompt (image tokens included), the chosen and the rejected answer, as the trainers count them."""
    pair = tokenize_pair(row, processor)
    return len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)


def apply_length_policy(data: PreferenceData, processor, max_length: int, truncation: Truncation) -> None:
    """Set aside the pairs that cannot fit `max_length` and count those whose answers will be cut (in place)."""
    problems: dict[int, str] = {}
    cut = 0
    columns = data.dataset.select_columns(["images", "prompt", "chosen", "rejected"])
    for index, row in enumerate(tqdm(columns, desc=f"Measuring pairs against --max-length {max_length}",
                                     total=len(columns))):
        prompt, chosen, rejected = pair_lengths(row, processor)
        longest = prompt + max(chosen, rejected)
        if longest <= max_length:
            continue
        if prompt >= max_length:
            problems[index] = (f"prompt is {prompt} tokens with its image tokens, leaving no room for an answer "
                               f"within --max-length {max_length} (raise it, or shrink images with "
                               "--image-longest-edge)")
        elif truncation == "skip":
            problems[index] = (f"prompt and answer are {longest} tokens, over --max-length {max_length} "
                               "(--truncation answer would keep the row with the answer cut)")
        else:
            cut += 1
    data.set_aside_rows(problems)
    if cut:
        data.kept_with_changes[f"with answers cut to fit --max-length {max_length}"] += cut
