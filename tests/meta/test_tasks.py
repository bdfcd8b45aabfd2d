"""Task samplers: no replacement within a task, support and query disjoint, reproducible."""

import numpy as np
import pytest

from nnkit.meta import FewShotClassification, TaskBatches, digits_tasks, sinusoid_family


def test_few_shot_tasks_use_distinct_classes_and_disjoint_examples():
    labels = np.repeat(np.arange(7), 6)
    x = np.arange(len(labels), dtype="float32")[:, None]  # x is the example's index
    sampler = FewShotClassification(x, labels, ways=5, shots=2, queries=4)
    inputs, y_query = sampler.sample(200, seed=0)
    for t in range(200):
        support = inputs["x_support"][t, :, 0].astype(int)
        query = inputs["x_query"][t, :, 0].astype(int)
        assert len(set(support)) == 10 and len(set(query)) == 20
        assert not set(support) & set(query)
        # Five distinct source classes, relabelled 0..4 consistently across support and query.
        mapping = {}
        for index, label in [
            *zip(support, inputs["y_support"][t], strict=True),
            *zip(query, y_query[t], strict=True),
        ]:
            assert mapping.setdefault(int(label), labels[index]) == labels[index]
        assert sorted(mapping) == [0, 1, 2, 3, 4] and len(set(mapping.values())) == 5
        assert np.bincount(inputs["y_support"][t]).tolist() == [2] * 5
        assert np.bincount(y_query[t]).tolist() == [4] * 5
    again, _ = sampler.sample(200, seed=0)
    np.testing.assert_array_equal(again["x_support"], inputs["x_support"])


def test_few_shot_sampler_refuses_too_few_examples():
    with pytest.raises(ValueError, match="5-way tasks need"):
        FewShotClassification(np.zeros((12, 2)), np.repeat(np.arange(4), 3), ways=5)
    with pytest.raises(ValueError, match="one label per example"):
        FewShotClassification(np.zeros((12, 2)), np.zeros(11))


def test_sinusoid_family_matches_its_definition():
    inputs, y_query, params = sinusoid_family(shots=10, queries=7).sample(
        500, seed=1, return_parameters=True
    )
    amplitude, phase = params[:, 0], params[:, 1]
    assert 0.1 <= amplitude.min() and amplitude.max() <= 5.0
    assert 0.0 <= phase.min() and phase.max() <= np.pi
    x = inputs["x_query"]
    assert -5.0 <= x.min() and x.max() <= 5.0
    expected = amplitude[:, None, None] * np.sin(x - phase[:, None, None])
    np.testing.assert_allclose(y_query, expected, rtol=1e-5, atol=1e-5)
    assert y_query.shape == (500, 7, 1) and inputs["y_support"].shape == (500, 10, 1)


def test_digit_classes_are_split_between_meta_train_and_meta_test():
    train = digits_tasks("train", rotations=(0, 90), test_digits=(0, 1, 2))
    test = digits_tasks("test", test_digits=(0, 1, 2), ways=3)
    assert sorted(test.classes.tolist()) == [0, 1, 2]
    assert sorted(train.classes.tolist()) == [*range(3, 10), *range(13, 20)]
    with pytest.raises(ValueError, match="rotations"):
        digits_tasks("train", rotations=(45,))
    with pytest.raises(ValueError, match="split"):
        digits_tasks("validation")


def test_task_batches_draw_new_reproducible_tasks_every_epoch():
    batches = TaskBatches(sinusoid_family(), tasks_per_batch=3, steps_per_epoch=2, seed=4)
    first = batches[1][0]["x_support"]
    np.testing.assert_array_equal(batches[1][0]["x_support"], first)
    assert not np.array_equal(batches[0][0]["x_support"], first)
    batches.on_epoch_end()
    assert not np.array_equal(batches[1][0]["x_support"], first)
    with pytest.raises(IndexError):
        batches[2]
