"""--max-length: pairs are measured before training; answers are cut (or rows skipped), never image tokens,
and both engines cut exactly the same answer tokens."""

import pytest
import torch
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

from vlmpref.data import load_preference_data
from vlmpref.data.normalize import trl_example
from vlmpref.models import load_processor
from vlmpref.train.fast.packing import tokenize_pair
from vlmpref.train.lengths import apply_length_policy, pair_lengths


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return load_processor(str(tiny_model_dir))


@pytest.fixture()
def data(shapes_dir):
    return load_preference_data(str(shapes_dir), "test", num_proc=1)


def _lengths(data, processor):
    return [pair_lengths(row, processor) for row in data.dataset]


def test_answer_policy_keeps_rows_and_counts_the_cut_ones(data, processor):
    lengths = _lengths(data, processor)
    limit = 40  # the tiny model's prompts are 30-35 tokens with their image: some answers do not fit
    over = sum(p + max(c, r) > limit for p, c, r in lengths)
    assert 0 < over < len(lengths) and all(p < limit for p, _, _ in lengths)
    apply_length_policy(data, processor, limit, "answer")
    assert len(data.dataset) == len(lengths) and len(data.set_aside) == 0
    assert data.kept_with_changes == {f"with answers cut to fit --max-length {limit}": over}
    assert f"({over} with answers cut to fit --max-length {limit})" in data.summary()


def test_skip_policy_sets_rows_aside_with_their_length(data, processor):
    lengths = _lengths(data, processor)
    apply_length_policy(data, processor, 40, "skip")
    over = {i: p + max(c, r) for i, (p, c, r) in enumerate(lengths) if p + max(c, r) > 40}
    assert dict(zip(data.set_aside["row_id"], data.set_aside["problem"])) == {
        i: f"prompt and answer are {n} tokens, over --max-length 40 (--truncation answer would keep the row with "
           "the answer cut)" for i, n in over.items()}
    assert len(data.dataset) == len(lengths) - len(over)


def test_a_prompt_without_room_for_an_answer_is_always_set_aside(data, processor):
    lengths = _lengths(data, processor)
    apply_length_policy(data, processor, 33, "answer")
    no_room = {i for i, (p, _, _) in enumerate(lengths) if p >= 33}
    assert no_room and set(data.set_aside["row_id"]) == no_room
    assert all("leaving no room for an answer within --max-length 33" in p for p in data.set_aside["problem"])
    assert "x prompt is N tokens with its image tokens, leaving no room" in data.summary()
    with pytest.raises(ValueError, match=r"max_length=33 is shorter than the \d+-token prompt .* image tokens cannot be cut"):
        tokenize_pair(next(r for i, r in enumerate(load_preference_data(data.source, "test", num_proc=1).dataset)
                           if i in no_room), processor, max_length=33)


def test_fast_engine_cuts_the_same_answer_tokens_as_trl(data, processor):
    """TRL's collator (keep_start at max_length) and the fast engine's tokenizer keep the same tokens per pair."""
    limit = 40
    for row in data.dataset:
        ours = tokenize_pair(row, processor, max_length=limit)
        batch = DataCollatorForVisionPreference(processor=processor, max_length=limit)([trl_example(row)])
        for index, answer in ((0, ours.chosen_ids), (1, ours.rejected_ids)):
            keep = batch["attention_mask"][index].bool()
            completion = batch["completion_mask"][index].bool()
            assert batch["input_ids"][index][keep & ~completion].tolist() == ours.prompt_ids  # image tokens whole
            assert batch["input_ids"][index][completion].tolist() == answer
        assert len(ours.prompt_ids) + max(len(ours.chosen_ids), len(ours.rejected_ids)) <= limit
        image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
        assert (torch.tensor(ours.prompt_ids) == image_token).sum() == processor.image_seq_len * len(row["images"])
