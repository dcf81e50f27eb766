"""The measures of danet.analysis: known answers on hand-built Q, K, V, and the head-only
recomputations checked against full forwards of a tiny model."""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from conftest import make_tiny_model
from danet.analysis import (ablate, cam_saturation, contribution, contribution_sentence, head_logits,
                            knockout_curve, measure_image, mixed_channels, percent, query_specificity,
                            specificity_from_qk)
from danet.analysis.contribution import cam_contribution, pam_contribution
from danet.analysis.knockout import Knockout, removed_context
from danet.analysis.attention_stats import switched_off
from danet.errors import DanetError, InputError, LabelMapError
from danet.inspection import inspect_image, to_tensor
from danet.analysis.metrics import confusion_matrix, scores

IMAGE_SIZE = (64, 96)                 # -> an 8 x 12 feature grid at output stride 8


def random_image(seed: int = 0, size=IMAGE_SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(5, alpha=0.7, beta=0.4)


@pytest.fixture(scope="module")
def image():
    return random_image()


@pytest.fixture(scope="module")
def result(model, image):
    return inspect_image(model, image)


def explicit_rows(query, key) -> np.ndarray:
    energy = np.asarray(query, np.float64) @ np.asarray(key, np.float64).T
    energy -= energy.max(1, keepdims=True)
    rows = np.exp(energy)
    return rows / rows.sum(1, keepdims=True)


# ---- the inspection result keeps what the measures need -----------------------------------------
def test_result_keeps_pam_input_and_value(model, result, image):
    c = model.head.pam_out_conv[0].in_channels
    assert result.pam_input.shape == (c, *result.grid_size)
    assert tuple(result.pam_value.shape) == (result.num_positions, c)
    with torch.inference_mode():
        features = model.backbone(to_tensor(image))
        pam_in = model.head.pam_in_conv(features)
        value = model.head.pam.value(pam_in).flatten(2).transpose(1, 2)[0]
    np.testing.assert_allclose(result.pam_input, pam_in[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(result.pam_value.numpy(), value.numpy(), atol=1e-5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.pam_value = None


# ---- specificity --------------------------------------------------------------------------------
def test_uniform_rows_have_no_query_specificity():
    query, key = torch.zeros(12, 3), torch.randn(12, 3)
    spec = specificity_from_qk(query, key, (3, 4))
    np.testing.assert_allclose(spec.js_bits, 0, atol=1e-6)
    np.testing.assert_allclose(spec.mean_row_share, 1, atol=1e-6)
    np.testing.assert_allclose(spec.sinks, 1 / 12, rtol=1e-5)
    assert spec.sink_peak == pytest.approx(1.0, rel=1e-5) and not spec.sampled


def test_identical_rows_have_zero_divergence_and_the_row_is_the_sink_map():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 4, generator=generator).repeat(20, 1)
    key = 2 * torch.randn(20, 4, generator=generator)
    spec = specificity_from_qk(query, key, (4, 5))
    np.testing.assert_allclose(spec.js_bits, 0, atol=1e-6)
    np.testing.assert_allclose(spec.mean_row_share, 1, atol=1e-5)
    row = explicit_rows(query[:1], key)[0]
    np.testing.assert_allclose(spec.sinks.ravel(), row, rtol=1e-5)
    top = spec.top_sinks(2)
    assert [r * 5 + c for r, c, _ in top] == list(np.argsort(-row)[:2])


def test_two_disjoint_one_hot_rows_by_hand():
    # Rows [1, 0] and [0, 1]: mean [1/2, 1/2]; mixture with each row [3/4, 1/4].
    # JS = 1/2 log2(4/3) + 1/2 (1/2 log2(2/3) + 1/2 log2 2) = 0.3113 bits; overlap = 1/2.
    query = torch.tensor([[40.0, 0.0], [0.0, 40.0]])
    key = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    spec = specificity_from_qk(query, key, (1, 2))
    by_hand = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5)
    np.testing.assert_allclose(spec.js_bits, by_hand, atol=1e-6)
    np.testing.assert_allclose(spec.mean_row_share, 0.5, atol=1e-6)


def test_specificity_matches_scipy_on_random_rows():
    generator = torch.Generator().manual_seed(1)
    query, key = torch.randn(30, 4, generator=generator), torch.randn(30, 4, generator=generator)
    spec = specificity_from_qk(query, key, (5, 6))
    rows = explicit_rows(query, key)
    mean = rows.mean(0)
    expected = [jensenshannon(row, mean, base=2) ** 2 for row in rows]
    np.testing.assert_allclose(spec.js_bits, expected, atol=1e-5)
    np.testing.assert_allclose(spec.mean_row_share, 1 - 0.5 * np.abs(rows - mean).sum(1), atol=1e-5)
    assert 0 < spec.js_mean < 1


def test_large_grids_are_sampled_with_a_seed_against_the_mean_row_of_all_queries():
    """The queries measured are a seeded sample; the mean row is always that of all N queries
    (the one the view subtracts), so the measures page and the view never disagree."""
    generator = torch.Generator().manual_seed(2)
    query, key = torch.randn(48, 3, generator=generator), torch.randn(48, 3, generator=generator)
    one = specificity_from_qk(query, key, (6, 8), max_queries=10, seed=3)
    two = specificity_from_qk(query, key, (6, 8), max_queries=10, seed=3)
    other = specificity_from_qk(query, key, (6, 8), max_queries=10, seed=4)
    assert one.sampled and one.queries.size == 10 and len(set(one.queries.tolist())) == 10
    assert np.array_equal(one.queries, two.queries) and not np.array_equal(one.queries, other.queries)
    rows = explicit_rows(query, key)
    np.testing.assert_allclose(one.sinks.ravel(), rows.mean(0), rtol=1e-5)
    np.testing.assert_allclose(one.sinks, other.sinks)
    with pytest.raises(DanetError, match="max_queries"):
        specificity_from_qk(query, key, (6, 8), max_queries=0)


def test_specificity_of_a_result_uses_its_rows(result):
    spec = query_specificity(result)
    rows = result.rows([(x, y) for x, y in [(1, 1), (90, 60)]]).reshape(2, -1)
    mean = explicit_rows(result.pam_query, result.pam_key).mean(0)
    np.testing.assert_allclose(spec.sinks.ravel(), mean, rtol=1e-4, atol=1e-7)
    last = result.num_positions - 1
    np.testing.assert_allclose(spec.js_bits[[0, last]],
                               [jensenshannon(r, mean, base=2) ** 2 for r in rows], atol=1e-5)


# ---- contribution -------------------------------------------------------------------------------
def test_alpha_or_beta_zero_contributes_nothing():
    generator = torch.Generator().manual_seed(4)
    q, k = torch.randn(6, 2, generator=generator), torch.randn(6, 2, generator=generator)
    v, a = torch.randn(6, 5, generator=generator), torch.rand(6, 5, generator=generator) + 0.1
    per_cell, overall = pam_contribution(q, k, v, a, 0.0)
    assert np.all(per_cell == 0) and overall == 0
    per_channel, overall = cam_contribution(torch.softmax(torch.randn(5, 5, generator=generator), 1), a.t(), 0.0)
    assert np.all(per_channel == 0) and overall == 0


def test_pam_contribution_by_hand():
    # Every V row is the same vector v, so every context is v: ratio |alpha| ||v|| / ||A_i||.
    generator = torch.Generator().manual_seed(5)
    q, k = torch.randn(4, 2, generator=generator), torch.randn(4, 2, generator=generator)
    v = torch.tensor([3.0, 4.0]).repeat(4, 1)                       # ||v|| = 5
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [6.0, 8.0]])
    per_cell, overall = pam_contribution(q, k, v, a, -0.2)
    np.testing.assert_allclose(per_cell[[0, 1, 3]], [1.0, 0.5, 0.1], rtol=1e-6)
    assert np.isnan(per_cell[2])                                   # a dead cell: no ratio
    assert overall == pytest.approx(0.2 * 5 * 2 / math.sqrt(1 + 4 + 100), rel=1e-6)


def test_cam_contribution_by_hand():
    # X = identity adds the channel to itself: ratio |beta| for every live channel.
    a = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, 0.0, 4.0]])
    per_channel, _ = cam_contribution(torch.eye(3), a, 0.3)
    np.testing.assert_allclose(per_channel[[0, 2]], 0.3, rtol=1e-6)
    assert np.isnan(per_channel[1])
    # A swap of channels 0 and 2: channel 0 gets ||A_2|| = 5 added to ||A_0|| = sqrt(5).
    swap = torch.tensor([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]])
    per_channel, _ = cam_contribution(swap, a, 0.5)
    np.testing.assert_allclose(per_channel[[0, 2]], [0.5 * 5 / math.sqrt(5), 0.5 * math.sqrt(5) / 5], rtol=1e-6)


def test_contribution_of_a_result_equals_the_modules_residual_terms(model, result, image):
    measured = contribution(result)
    with torch.inference_mode():
        features = model.backbone(to_tensor(image))
        pam_in = model.head.pam_in_conv(features)
        pam_out = model.head.pam(pam_in)
        cam_in = model.head.cam_in_conv(features)
        cam_out = model.head.cam(cam_in)
    pam_expected = ((pam_out - pam_in).norm(dim=1) / pam_in.norm(dim=1))[0].numpy()
    cam_expected = ((cam_out - cam_in).flatten(2).norm(dim=2) / cam_in.flatten(2).norm(dim=2))[0].numpy()
    np.testing.assert_allclose(measured.pam, pam_expected, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(measured.cam, cam_expected, rtol=1e-3, atol=1e-6)
    assert measured.pam_mean == pytest.approx(np.nanmean(pam_expected), rel=1e-3)
    assert measured.alpha == pytest.approx(0.7) and measured.beta == pytest.approx(0.4)


def test_sentence_and_percentages():
    assert contribution_sentence(0.09, 0.024) == "PAM changes the features by 9% on average, CAM by 2.4%."
    assert percent(0.2345) == "23%" and percent(0.0004) == "0.04%" and percent(float("nan")) == "n/a"


# ---- CAM saturation ------------------------------------------------------------------------------
def test_cam_permutation_is_one_hot_and_uniform_is_not():
    permutation = np.eye(6)[[1, 2, 3, 4, 5, 0]]
    sat = cam_saturation(permutation)
    np.testing.assert_allclose(sat.entropy_bits, 0, atol=1e-12)
    np.testing.assert_allclose(sat.effective_channels, 1)
    assert sat.one_hot and sat.saturated and sat.self_share == 0
    assert sat.top_channel.tolist() == [1, 2, 3, 4, 5, 0]
    assert "one-hot" in sat.sentence()
    uniform = cam_saturation(np.full((8, 8), 1 / 8))
    np.testing.assert_allclose(uniform.entropy_bits, 3)
    np.testing.assert_allclose(uniform.effective_channels, 8)
    assert not uniform.one_hot and not uniform.saturated


def test_cam_two_channel_rows_and_mixed_channels():
    matrix = np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.995, 0.005, 0.0], [0.25] * 4, [0.0, 0.0, 0.0, 1.0]])
    sat = cam_saturation(matrix)
    assert sat.entropy_bits[0] == pytest.approx(1.0) and sat.effective_channels[0] == pytest.approx(2.0)
    assert sat.one_hot_rows.tolist() == [False, True, False, True]
    assert mixed_channels(matrix, 1) == [(1, 0.995)]                 # 0.005 is negligible
    assert mixed_channels(matrix, 1, threshold=0.001) == [(1, 0.995), (2, 0.005)]
    assert [c for c, _ in mixed_channels(matrix, 0)] == [0, 1]
    with pytest.raises(DanetError, match="channel 9"):
        mixed_channels(matrix, 9)
    with pytest.raises(DanetError, match="square"):
        cam_saturation(np.ones((2, 3)))


# ---- ablation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("pam_off, cam_off", [(True, False), (False, True), (True, True)])
def test_head_only_ablation_equals_a_full_forward_with_the_scale_zeroed(model, result, image, pam_off, cam_off,
                                                                       monkeypatch):
    reference = switched_off(model, pam=pam_off, cam=cam_off)
    with torch.inference_mode():
        expected = reference(to_tensor(image))
    monkeypatch.setattr(model.backbone, "forward", lambda x: pytest.fail("the ablation ran the backbone"))
    ablation = ablate(model, result, pam_off=pam_off, cam_off=cam_off)
    for name, logits in expected.items():
        np.testing.assert_allclose(ablation.logits[name].numpy(), logits[0].numpy(), atol=1e-4, err_msg=name)
    assert np.array_equal(ablation.changed, ablation.prediction != result.prediction("fused"))
    assert ablation.changed_fraction == pytest.approx(ablation.changed.mean())
    assert model.head.pam.alpha.item() == pytest.approx(0.7) and model.head.cam.beta.item() == pytest.approx(0.4)


def test_head_recomputation_reproduces_the_result(model, result):
    grid = head_logits(model, result)
    for name, logits in grid.items():
        upsampled = model.upsample(logits[None], result.image_size)[0]
        np.testing.assert_allclose(upsampled.numpy(), result.logits[name].numpy(), atol=1e-4)


def test_ablation_scores_a_label_map(model, result):
    label = np.random.default_rng(7).integers(0, 6, IMAGE_SIZE)          # 5 = void for 5 classes
    ablation = ablate(model, result, pam_off=True, cam_off=True, label=label)
    before = scores(confusion_matrix(result.prediction("fused"), label, 5))["miou"]
    after = scores(confusion_matrix(ablation.prediction, label, 5))["miou"]
    assert ablation.miou_before == pytest.approx(before) and ablation.miou_after == pytest.approx(after)
    assert ablation.miou_change == pytest.approx(after - before)
    with pytest.raises(LabelMapError, match="label map"):
        ablate(model, result, label=label[:10])


def test_ablation_refuses_results_without_branches_and_other_models(model, result):
    bare = result.with_kept(pam_input=None)
    with pytest.raises(DanetError, match="pam_input"):
        ablate(model, bare)
    with pytest.raises(InputError, match="not the one"):
        ablate(make_tiny_model(5, head_channels=8), result)
    training = copy.deepcopy(model).train()
    with pytest.raises(InputError, match="eval mode"):
        ablate(training, result)


# ---- knockout ------------------------------------------------------------------------------------
def head_with_patched_row(model, features, query_cell: int, removed: np.ndarray):
    """Grid fused logits of a full head forward whose PAM row ``query_cell`` drops ``removed`` cells."""
    pam = model.head.pam

    def attend(x):
        b, c, h, w = x.shape
        query, key, value = pam.project(x)
        energy = query[0] @ key[0].T
        energy[query_cell, torch.from_numpy(removed)] = float("-inf")
        context = torch.softmax(energy, -1) @ value[0]
        return pam.alpha * context.T.reshape(1, c, h, w) + x, query, key, value

    patched = copy.deepcopy(model)
    patched.head.pam.attend = attend
    return patched.head.inspect(features).logits["fused"][0]


@pytest.mark.parametrize("strategy", ["top", "least"])
def test_knockout_equals_a_full_forward_with_the_modified_row(model, result, image, strategy):
    gw = result.grid_size[1]
    cell = (3, 5)
    curve = knockout_curve(model, result, cell=cell, max_k=20)
    row = result.rows([result.cell_to_pixel_box(*cell)[:2]]).ravel().astype(np.float64)
    order = np.argsort(-row if strategy == "top" else row, kind="stable")
    with torch.inference_mode():
        features = model.backbone(to_tensor(image))
        full = model.head.inspect(features).logits["fused"][0][:, cell[0], cell[1]]
        np.testing.assert_allclose(curve.base_logits, full.numpy(), atol=1e-4)
        for k in (1, 7, 20):
            expected = head_with_patched_row(model, features, cell[0] * gw + cell[1], order[:k])
            np.testing.assert_allclose(curve.logits[strategy][k - 1], expected[:, cell[0], cell[1]].numpy(),
                                       atol=1e-4, err_msg=f"k={k}")
    assert curve.predicted_class == int(full.argmax())
    np.testing.assert_allclose(curve.removed_mass[strategy][-1], np.sort(row)[::-1][:20].sum()
                               if strategy == "top" else np.sort(row)[:20].sum(), rtol=1e-4)


def test_knocking_out_the_only_attended_cell_of_a_one_hot_row(model, result):
    # Hand-built Q, K: query cell q attends only to cell j (energy 60 there, 0 elsewhere); every
    # other query has Q = 0 (uniform rows). Removing j leaves q a uniform row over the other cells.
    gh, gw = result.grid_size
    n, d = result.num_positions, result.pam_query.shape[1]
    q, j = 2 * gw + 3, 5 * gw + 9
    query, key = torch.zeros(n, d), torch.zeros(n, d)
    query[q, 0], key[j, 0] = 60.0, 1.0
    hand = result.with_kept(pam_query=query, pam_key=key)
    curve = knockout_curve(model, hand, cell=divmod(q, gw), max_k=3)

    value, inputs = hand.pam_value.double(), torch.from_numpy(hand.pam_input).double()
    alpha = hand.alpha
    others = torch.ones(n, dtype=torch.bool)
    others[j] = False
    context = value.mean(0).repeat(n, 1)                             # uniform rows everywhere ...
    context[q] = value[j]                                            # ... but q copies V_j
    pam_map = alpha * context.T.reshape(inputs.shape) + inputs
    knocked = pam_map.clone()
    knocked[:, q // gw, q % gw] = alpha * value[others].mean(0) + inputs[:, q // gw, q % gw]
    head = copy.deepcopy(model.head).double()
    with torch.inference_mode():
        cam_feat = head.cam_out_conv(torch.from_numpy(hand.cam_output).double()[None])

        def fused(pam_input):
            return head.fused_classifier(head.pam_out_conv(pam_input[None]) + cam_feat)[0, :, q // gw, q % gw]

        before, after = fused(pam_map), fused(knocked)
    c = int(before.argmax())
    assert curve.predicted_class == c
    assert curve.drops["top"][0] == pytest.approx(float(before[c] - after[c]), abs=1e-4)
    assert curve.removed_mass["top"][0] == pytest.approx(1.0, abs=1e-6)
    assert abs(curve.drops["top"][0]) > 1e-3                        # the test is not vacuous


def test_removed_context_renormalises_the_rest():
    energy = torch.tensor([5.0, 1.0, 1.0, 0.0])
    value = torch.eye(4)
    masks = torch.tensor([[True, False, False, False], [True, True, True, False]])
    out = removed_context(energy, value, masks)
    weights = np.exp([1.0, 1.0, 0.0])
    np.testing.assert_allclose(out[0].numpy(), np.r_[0, weights / weights.sum()], rtol=1e-6)
    np.testing.assert_allclose(out[1].numpy(), [0, 0, 0, 1], atol=1e-7)


def test_knockout_curves_are_seeded_and_ordered(model, result):
    one = knockout_curve(model, result, (40.0, 30.0), max_k=16, seed=1)
    two = knockout_curve(model, result, (40.0, 30.0), max_k=16, seed=1)
    other = knockout_curve(model, result, (40.0, 30.0), max_k=16, seed=2)
    np.testing.assert_array_equal(one.drops["random"], two.drops["random"])
    assert not np.array_equal(one.drops["random"], other.drops["random"])
    assert one.ks.tolist() == list(range(1, 17))
    mass = one.removed_mass
    assert np.all(mass["top"] >= mass["random"] - 1e-9) and np.all(mass["random"] >= mass["least"] - 1e-9)
    assert one.verdict in ("faithful", "not faithful", "no effect")
    assert set(one.summary()) >= {"auc_top", "auc_random", "verdict", "flip_k"}
    # The PAM-only output gives its own curves.
    assert knockout_curve(model, result, (40.0, 30.0), max_k=4, output="pam").output == "pam"


def test_knockout_caps_k_and_refuses_bad_points(model, result):
    tiny = knockout_curve(model, result, cell=(0, 0), max_k=10_000, draws=1)
    assert tiny.ks[-1] == result.num_positions - 1
    with pytest.raises(InputError, match="outside"):
        knockout_curve(model, result, (500.0, 5.0))
    with pytest.raises(InputError, match="outside"):
        knockout_curve(model, result, cell=(99, 0))
    with pytest.raises(InputError, match="exactly one"):
        knockout_curve(model, result)
    with pytest.raises(InputError, match="output"):
        knockout_curve(model, result, cell=(0, 0), output="cam")


def make_knockout(top, random, least, tol=0.05):
    ks = np.arange(1, len(top) + 1)
    logits = {name: np.zeros((len(ks), 2)) for name in ("top", "random", "least")}
    return Knockout(cell=(0, 0), output="fused", predicted_class=0, base_logits=np.zeros(2), ks=ks,
                    drops={"top": np.asarray(top, float), "random": np.asarray(random, float),
                           "least": np.asarray(least, float)},
                    random_std=np.zeros(len(ks)), logits=logits, removed_mass={}, effect_tol=tol)


def test_verdict_rule():
    assert make_knockout([0.5, 1.0], [0.1, 0.2], [0.0, 0.0]).verdict == "faithful"
    assert make_knockout([0.3, 0.4], [0.25, 0.3], [0.0, 0.0]).verdict == "not faithful"   # < 2x random
    assert make_knockout([0.02, 0.04], [0.0, 0.0], [0.0, 0.0]).verdict == "no effect"
    assert make_knockout([0.1, 0.1], [-0.2, -0.2], [0, 0]).verdict == "faithful"         # random helps
    assert "2 x AUC_random" in make_knockout([0], [0], [0]).rule


# ---- all at once -----------------------------------------------------------------------------------
def test_measure_image_summary(result):
    measures = measure_image(result)
    summary = measures.summary()
    for name in ("js_mean", "mean_row_share", "pam_contribution_mean", "cam_contribution_mean",
                 "cam_effective_channels_mean", "sink_peak"):
        assert math.isfinite(summary[name]), name
    assert summary["queries_measured"] == result.num_positions
    assert measures.sentences()[0].startswith("PAM changes the features by")
    with pytest.raises(DanetError, match="pam_value"):
        measure_image(result.with_kept(pam_value=None))


# ---- dataset level (danet.analysis.attention_stats) --------------------------------------------------------
def test_query_statistics_add_specificity_lift_and_contribution():
    from danet.analysis.attention_stats import query_statistics

    gt = np.array([[0, 0, 1], [1, 1, 2]])
    rows = np.random.default_rng(8).dirichlet(np.ones(6), size=2)
    mean_row = np.random.default_rng(9).dirichlet(np.ones(6))
    contribution_map = np.arange(6, dtype=float).reshape(2, 3) / 10
    stats = query_statistics(rows, np.array([0, 4]), gt, gt, (20, 30), mean_row=mean_row,
                             pam_contribution=contribution_map)
    np.testing.assert_allclose(stats["js_from_mean"], [jensenshannon(r, mean_row, base=2) ** 2 for r in rows],
                               atol=1e-9)
    np.testing.assert_allclose(stats["mean_row_share"], np.minimum(rows, mean_row).sum(1))
    np.testing.assert_allclose(stats["pam_contribution"], [0.0, 0.4])
    np.testing.assert_allclose(stats["lift_gt"], stats["same_class_mass_gt"] / stats["chance_gt"])
    np.testing.assert_allclose(stats["chance_gt"], [2 / 6, 3 / 6])
    plain = query_statistics(rows, np.array([0, 4]), gt, gt, (20, 30))
    assert np.all(np.isnan(plain["js_from_mean"])) and np.all(np.isnan(plain["pam_contribution"]))


def test_summary_reports_lift_median_and_the_new_means():
    from danet.analysis.attention_stats import STAT_COLUMNS, summarise

    queries = {"gt_class": np.array([0, 0, 0, 1]), "row": np.arange(4)}
    for name in STAT_COLUMNS:
        queries[name] = np.array([0.1, 0.2, 0.6, 0.5])
    queries["lift_gt"] = np.array([1.0, 2.0, 9.0, 4.0])
    first, second, every = summarise(queries, ("a", "b"))
    assert first["lift_gt_median"] == pytest.approx(2.0) and every["lift_gt_median"] == pytest.approx(3.0)
    assert first["lift_gt"] == pytest.approx(1.0)                    # ratio of the means: 0.3 / 0.3
    assert first["js_from_mean"] == pytest.approx(0.3) and second["pam_contribution"] == pytest.approx(0.5)


def test_driver_adds_per_image_measures_and_head_only_ablation(tmp_path):
    from test_attention_stats import make_pairs

    from danet.analysis.attention_stats import IMAGE_COLUMNS, compute_attention_stats
    from danet.checkpoints.meta import ModelMeta
    from danet.data.camvid import read_pair
    from danet.data.palettes import generic_dataset

    model = make_tiny_model(5, alpha=0.7, beta=0.3)
    meta = ModelMeta(config=model.config, dataset=generic_dataset(5))
    pairs = make_pairs(tmp_path, count=2)
    stats = compute_attention_stats(model, meta, pairs, points_per_image=5, seed=1, ignore_index=11)
    assert [row["image"] for row in stats.per_image] == ["f0.png", "f1.png"]
    assert set(stats.per_image[0]) == set(IMAGE_COLUMNS)
    image, _ = read_pair(*pairs[0])
    result = inspect_image(model, image)
    measures = measure_image(result, seed=1)
    assert stats.per_image[0]["pam_contribution_mean"] == pytest.approx(measures.contribution.pam_mean)
    changed = ablate(model, result, pam_off=True, cam_off=True).changed_fraction
    assert stats.per_image[0]["changed_both_off"] == pytest.approx(changed)
    assert stats.overall["js_mean"] == pytest.approx(np.mean([r["js_mean"] for r in stats.per_image]))
    for name in ("js_from_mean", "mean_row_share", "pam_contribution", "lift_gt"):
        assert np.all(np.isfinite(stats.queries[name])), name
    assert "lift_gt_median" in stats.summary[-1] and "js_from_mean" in stats.summary[-1]
    # The head-only ablation scores what full forwards of zeroed copies score.
    confusion = np.zeros((5, 5), np.int64)
    reference = switched_off(model, pam=True, cam=False)
    for image_path, label_path in pairs:
        picture, label = read_pair(image_path, label_path)
        with torch.inference_mode():
            fused = reference(to_tensor(picture))["fused"][0].argmax(0).numpy()
        confusion += confusion_matrix(fused, label, 5, 11)
    pam_off = stats.ablation[1]
    assert pam_off["variant"].startswith("alpha=0") and pam_off["alpha"] == 0.0
    assert pam_off["miou_fused"] == pytest.approx(scores(confusion)["miou"])
    assert 0 <= pam_off["changed_fraction_fused"] <= 1 and stats.ablation[0]["changed_fraction_fused"] == 0
    skipped = compute_attention_stats(model, meta, pairs[:1], 3, ablation=False, ignore_index=11, measures=False)
    assert np.all(np.isnan(skipped.queries["js_from_mean"])) and math.isnan(skipped.overall["changed_pam_off"])


def test_knockout_scale_is_the_drop_without_pam_at_the_cell(model, result, image):
    cell = (4, 6)
    curve = knockout_curve(model, result, cell=cell, max_k=2, draws=1)
    with torch.inference_mode():
        features = model.backbone(to_tensor(image))
        pam = model.head.pam                      # reference: PAM's output at the cell replaced by its input

        def attend(x):
            out, query, key, value = pam.attend(x)
            out = out.clone()
            out[:, :, cell[0], cell[1]] = x[:, :, cell[0], cell[1]]
            return out, query, key, value

        patched = copy.deepcopy(model)
        patched.head.pam.attend = attend
        expected = patched.head.inspect(features).logits["fused"][0][:, cell[0], cell[1]].numpy()
    c = curve.predicted_class
    assert curve.pam_off_drop == pytest.approx(float(curve.base_logits[c] - expected[c]), abs=1e-4)
    assert curve.summary()["pam_off_drop"] == curve.pam_off_drop


@pytest.mark.slow
def test_shipped_model_measures_and_recomputation():
    """The default model on a shipped sample: the head recomputation reproduces its logits and every
    measure runs at the real size (N = 2,700)."""
    from pathlib import Path

    from PIL import Image

    import danet

    loaded = danet.load(device="cpu")
    sample = Path(__file__).resolve().parent.parent / "assets" / "samples" / "0016E5_07959.png"
    image = np.array(Image.open(sample).convert("RGB"))
    result = inspect_image(loaded.model, image, loaded.meta.mean, loaded.meta.std)
    assert result.num_positions == 2700
    grid = head_logits(loaded.model, result)
    fused = loaded.model.upsample(grid["fused"][None], result.image_size)[0]
    np.testing.assert_allclose(fused.numpy(), result.fused_logits.numpy(), atol=1e-4)
    measures = measure_image(result)
    assert 0 < measures.contribution.pam_mean < 1 and 0 < measures.contribution.cam_mean < 1
    assert measures.specificity.queries.size == 2700 and not measures.specificity.sampled
    curve = knockout_curve(loaded.model, result, (240.0, 250.0))
    assert curve.ks[-1] == 64 and curve.verdict in ("faithful", "not faithful", "no effect")
