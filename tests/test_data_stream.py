"""The prompt stream: seeded order, epoch roll-over, exact resume from a saved state."""

import pytest

from memrl.train.data_stream import PromptStream, StreamState
from memrl.types import Record

DATA = [Record(id=str(i), question=f"q{i}", answer=str(i)) for i in range(10)]


def ids(records):
    return [r.id for r in records]


def test_each_epoch_is_a_permutation_and_epochs_differ():
    stream = PromptStream(DATA, seed=3)
    first = ids(stream.next_batch(10))
    second = ids(stream.next_batch(10))
    assert sorted(first) == sorted(second) == sorted(ids(DATA))
    assert first != second
    assert stream.state.to_dict() == {"epoch": 1, "position": 10, "consumed": 20}


def test_same_seed_same_order_other_seed_other_order():
    a = ids(PromptStream(DATA, seed=1).next_batch(25))
    b = ids(PromptStream(DATA, seed=1).next_batch(25))
    c = ids(PromptStream(DATA, seed=2).next_batch(25))
    assert a == b and a != c


@pytest.mark.parametrize("cut", [0, 3, 10, 20, 23])
def test_resume_from_state_continues_the_same_sequence(cut):
    # cut=10 and 20 resume exactly at an epoch boundary.
    full = ids(PromptStream(DATA, seed=7).next_batch(40))
    first = PromptStream(DATA, seed=7)
    head = ids(first.next_batch(cut)) if cut else []
    saved = StreamState.from_dict(first.state.to_dict())
    tail = ids(PromptStream(DATA, seed=7, state=saved).next_batch(40 - cut))
    assert head + tail == full


def test_batch_larger_than_dataset_spans_epochs():
    stream = PromptStream(DATA[:3], seed=0)
    assert len(stream.next_batch(8)) == 8
    assert stream.state.epoch == 2 and stream.state.position == 2


def test_errors():
    with pytest.raises(ValueError, match="empty"):
        PromptStream([], seed=0)
    with pytest.raises(ValueError, match="malformed"):
        StreamState.from_dict({"epoch": 1})
