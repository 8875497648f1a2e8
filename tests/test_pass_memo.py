"""A random-effect coordinate keeps its entity layout across passes of coordinate descent and
starts each pass from the last model directly: the same numbers as building everything again."""

import dataclasses

import numpy as np
import pytest
import pyarrow as pa
import scipy.sparse as sp

from gdmix.config import RandomEffectConfig
from gdmix.dataset import Dataset, EntityIds
from gdmix.models.coordinates import RandomEffectCoordinate


def _dataset(seed=21, rows=2500, entities=400, prefix="u"):
    rng = np.random.default_rng(seed)
    codes = np.minimum(rng.zipf(1.7, rows), entities) - 1
    ids = EntityIds.from_array(pa.array([f"{prefix}{c}" for c in codes]))
    features = sp.random(rows, 25, density=0.2, random_state=seed, format="csr")
    return Dataset(uid=np.arange(rows), label=(rng.random(rows) < 0.4).astype(float), weight=np.ones(rows),
                   offset=np.zeros(rows), entities={"user": ids}, bags={"user_bag": features})


def _passes(coordinate_for_pass, data, passes=3):
    rng = np.random.default_rng(0)
    model, reports = None, []
    for number in range(passes):
        offsets = rng.normal(scale=0.3, size=data.num_rows)
        model, report = coordinate_for_pass(number).fit(data, offsets, model)
        reports.append(report)
    return model, reports


def _same(a, b):
    assert np.array_equal(a.intercepts, b.intercepts)
    assert (a.coef != b.coef).nnz == 0 and np.array_equal(a.coef.indices, b.coef.indices)
    assert a.entity_ids.equals(b.entity_ids)


def test_later_passes_reuse_the_layout_and_give_the_same_model():
    config = RandomEffectConfig(name="re", type="random_effect", entity="user", feature_bag="user_bag", l2=0.8)
    data = _dataset()
    kept = RandomEffectCoordinate(config)
    layouts = []

    def remembering(number):
        if kept.memo.problem is not None:
            layouts.append(kept.memo.problem.layout)
        return kept

    model, reports = _passes(remembering, data)
    fresh_model, fresh_reports = _passes(lambda number: RandomEffectCoordinate(config), data)
    _same(model, fresh_model)
    assert reports == fresh_reports  # counts and iterations too
    assert len(layouts) == 2 and layouts[0] is layouts[1] is kept.memo.problem.layout
    assert reports[1]["iterations_mean"] < reports[0]["iterations_mean"]  # warm passes start from the last model


def test_entities_absent_from_the_rows_are_carried_over_on_every_pass():
    """Warm-started from a model of other entities: each pass keeps them after its own (the
    later passes know which rows they are without looking their ids up), as a fresh fit would."""
    config = RandomEffectConfig(name="re", type="random_effect", entity="user", feature_bag="user_bag", l2=0.8)
    data, elsewhere = _dataset(), _dataset(seed=23, rows=600, entities=60, prefix="v")
    prior, _ = RandomEffectCoordinate(config).fit(elsewhere, np.zeros(elsewhere.num_rows))
    kept, rng = RandomEffectCoordinate(config), np.random.default_rng(1)
    kept_model = fresh_model = prior
    for number in range(3):
        offsets = rng.normal(scale=0.3, size=data.num_rows)
        hit = kept.memo.start_from(kept_model, data.entities["user"].codes, data.bags["user_bag"], data.label,
                                   data.weight, config) is not None
        assert hit == (number > 0)
        kept_model, report = kept.fit(data, offsets, kept_model)
        fresh_model, _ = RandomEffectCoordinate(config).fit(data, offsets, fresh_model)
        _same(kept_model, fresh_model)
        assert kept_model.num_entities == report["entities_trained"] + prior.num_entities
        assert kept_model.entity_ids.slice(report["entities_trained"]).equals(prior.entity_ids)


def test_new_rows_or_an_edited_model_are_not_taken_for_the_last_ones():
    config = RandomEffectConfig(name="re", type="random_effect", entity="user", feature_bag="user_bag", l2=0.8)
    data, coordinate = _dataset(), RandomEffectCoordinate(config)
    model, _ = coordinate.fit(data, np.zeros(data.num_rows))
    layout = coordinate.memo.problem.layout
    rows = (data.entities["user"].codes, data.bags["user_bag"], data.label, data.weight, config)
    assert coordinate.memo.start_from(model, *rows) is not None

    other = _dataset(seed=22)  # other rows, warm-started from this model: built again, looked up
    assert coordinate.memo.start_from(model, other.entities["user"].codes, *rows[1:]) is None
    moved, _ = coordinate.fit(other, np.zeros(other.num_rows), model)
    _same(moved, RandomEffectCoordinate(config).fit(other, np.zeros(other.num_rows), model)[0])
    assert coordinate.memo.problem.layout is not layout

    model, _ = coordinate.fit(data, np.zeros(data.num_rows))
    edited = dataclasses.replace(model, coef=model.coef.copy())
    assert coordinate.memo.start_from(edited, *rows) is None  # another object: looked up, not trusted
    with pytest.raises(ValueError):  # its column indices are the memo layout's, read-only: no edit in place
        model.coef.eliminate_zeros()
    model.coef.data[:3] = 0.0
    edited = dataclasses.replace(model, coef=model.coef.copy())
    edited.coef.eliminate_zeros()  # an edited copy of the last model: looked up, not trusted
    assert coordinate.memo.start_from(edited, *rows) is None
    model = edited
    again, _ = coordinate.fit(data, np.zeros(data.num_rows), model)
    reference, _ = RandomEffectCoordinate(config).fit(data, np.zeros(data.num_rows), model)
    _same(again, reference)


def test_training_scores_come_from_the_solve_and_equal_the_models_bit_for_bit(monkeypatch):
    """The kernel scores each entity's rows while solving it; rows it did not solve (entities
    the batched solver took, rows left out by min_rows / max_rows) are scored afterwards: the
    coordinate's scores of its training rows are the model's, bit for bit."""
    from gdmix.models import random_effect

    monkeypatch.setattr(random_effect, "NATIVE_MAX_SIDE", 4)  # larger entities: the batched solver
    config = RandomEffectConfig(name="re", type="random_effect", entity="user", feature_bag="user_bag", l2=0.8,
                                min_rows=2, max_rows=40)
    data, coordinate = _dataset(), RandomEffectCoordinate(config)
    entities, features = data.entities["user"], data.bags["user_bag"]
    model = None
    for offsets in (np.zeros(data.num_rows), np.full(data.num_rows, 0.3)):
        model, _ = coordinate.fit(data, offsets, model)
        solved = coordinate.memo.scores
        if random_effect.native.library() is not None:
            assert 0 < np.isnan(solved).sum() < data.num_rows  # some rows by the kernel, some not
        assert np.array_equal(coordinate.score(model, data), model.score(entities, features))

    other = _dataset(seed=22)  # other rows: scored by the model, not taken from the memo
    assert coordinate.memo.training_scores(model, other.entities["user"], other.bags["user_bag"], other.label,
                                           other.weight) is None
    edited = dataclasses.replace(model, coef=model.coef.copy())
    edited.coef.data[:3] = 0.0
    edited.coef.eliminate_zeros()  # not the model the solve scored with
    assert coordinate.memo.training_scores(edited, entities, features, data.label, data.weight) is None


def test_the_partitioned_trainer_scores_active_rows_from_the_solve_and_passive_ones_after():
    from gdmix.jobs.partition_data import TrainingRows
    from gdmix.jobs.random_effect import _training_scores
    from gdmix.models.random_effect import PassMemo, fit_random_effect_model

    config = RandomEffectConfig(name="re", type="random_effect", entity="user", feature_bag="user_bag", l2=0.8)
    data = _dataset()
    active = np.random.default_rng(3).random(data.num_rows) < 0.8  # the rest: passive (max_rows)
    rows = TrainingRows.active(data, active, config)
    memo = PassMemo()
    model, _ = fit_random_effect_model(rows.entities, rows.features, rows.labels, rows.weights, rows.offsets,
                                       config, memo=memo)
    memo.model = model
    expected = model.score(data.entities["user"], data.bags["user_bag"])
    solved = memo.scores
    assert not np.isnan(solved).all()  # the solve scored the active rows
    assert np.array_equal(_training_scores(model, memo, rows, data, active, config), expected)
    assert memo.scores is None  # handed over, not copied: a second call scores the model
    assert memo.training_scores(model, rows.entities, rows.features, rows.labels, rows.weights) is None
    memo.scores = solved
    memo.model = None  # not the model the solve scored with: every row scored by the model
    assert np.array_equal(_training_scores(model, memo, rows, data, active, config), expected)


@pytest.mark.parametrize("weight_of_first_entity", [1.0, 0.0])  # 0: an entity left untrained
def test_coordinate_descent_writes_a_warm_pass_over_the_last_models_coefficients(weight_of_first_entity):
    """Between begin_passes and end_passes, a warm pass solves in the last model's own arrays
    (one generation held, not two), to the same bits as a coordinate that copies."""
    config = RandomEffectConfig(name="re", type="random_effect", entity="user", feature_bag="user_bag", l2=0.8)
    data = _dataset()
    data.weight[data.entities["user"].codes == data.entities["user"].codes[0]] = weight_of_first_entity
    recycling, copying = RandomEffectCoordinate(config), RandomEffectCoordinate(config)
    recycling.begin_passes()
    rng = np.random.default_rng(5)
    last_recycled = last_copied = None
    for number in range(3):
        offsets = rng.normal(scale=0.5, size=data.num_rows) if number else np.zeros(data.num_rows)
        before = None if last_copied is None else last_copied.coef.data.copy()
        recycled, _ = recycling.fit(data, offsets, last_recycled)
        copied, _ = copying.fit(data, offsets, last_copied)
        _same(recycled, copied)
        if last_recycled is not None:
            everyone = weight_of_first_entity > 0  # else the start is a fresh array, its own to reuse
            assert np.shares_memory(recycled.coef.data, last_recycled.coef.data) == everyone
            # the same layout's column indices, shared (read-only) rather than converted again
            assert np.shares_memory(recycled.coef.indices, last_recycled.coef.indices) == everyone
            assert recycled.coef.indices.flags.writeable != everyone  # read-only where shared
            assert np.array_equal(last_copied.coef.data, before)  # without begin_passes: left alone
        last_recycled, last_copied = recycled, copied
    recycling.end_passes()
    assert not recycling.memo.recycle
