"""Online hard example mining in ``danet.jobs.train``: which pixels it keeps, and that the loss is
cross-entropy over exactly those pixels."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from danet.data.camvid import IGNORE_INDEX
from danet.jobs.train import hard_pixels, seg_loss


def _logits_for(probabilities: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class logits on a 1 x len row whose true-class (class 0) probability is as given."""
    p = torch.tensor(probabilities, dtype=torch.float64)
    logits = torch.stack([p.log(), (1 - p).log()]).unsqueeze(1).float()     # 2 x 1 x W
    return logits.unsqueeze(0), torch.zeros(1, 1, len(probabilities), dtype=torch.long)


def test_keeps_pixels_below_the_threshold():
    logits, target = _logits_for([0.1, 0.5, 0.69, 0.71, 0.9, 0.99])
    kept = hard_pixels(logits, target, thresh=0.7, min_kept=1)
    assert kept.flatten().tolist() == [True, True, True, False, False, False]


def test_widens_to_min_kept_least_confident():
    logits, target = _logits_for([0.95, 0.8, 0.99, 0.9, 0.85])
    kept = hard_pixels(logits, target, thresh=0.7, min_kept=2)
    assert kept.flatten().tolist() == [False, True, False, False, True]


def test_never_keeps_ignored_pixels():
    logits, target = _logits_for([0.1, 0.2, 0.3, 0.99])
    target[0, 0, :2] = IGNORE_INDEX
    kept = hard_pixels(logits, target, thresh=0.7, min_kept=10)
    assert kept.flatten().tolist() == [False, False, True, True]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.floats(0.05, 0.95), st.integers(1, 200), st.integers(0, 2 ** 16))
def test_kept_set_is_hard_or_the_min_kept_hardest(classes, thresh, min_kept, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes + 1, 5, 7, generator=generator) * 3
    target = torch.randint(0, classes + 1, (2, 5, 7), generator=generator)
    target[torch.rand(2, 5, 7, generator=generator) < 0.2] = IGNORE_INDEX
    kept = hard_pixels(logits, target, thresh, min_kept)
    valid = target != IGNORE_INDEX
    prob = torch.softmax(logits, 1).gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
    assert not (kept & ~valid).any()
    assert (kept | ~(valid & (prob < thresh))).all()                # every hard pixel is kept
    assert int(kept.sum()) >= min(min_kept, int(valid.sum()))
    if kept.any() and (valid & ~kept).any():                        # kept ones are the least confident
        assert prob[kept].max() <= max(thresh, prob[valid & ~kept].min())


def test_loss_is_cross_entropy_over_the_kept_pixels():
    torch.manual_seed(0)
    outputs = tuple(torch.randn(2, 4, 6, 8) for _ in range(3))
    target = torch.randint(0, 4, (2, 6, 8))
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5])
    got = seg_loss(outputs, target, weight, 0.4, ohem_thresh=0.6, ohem_min_kept=10)
    want = 0
    for logits, factor in zip(outputs, (1.0, 0.4, 0.4)):
        hard = hard_pixels(logits, target, 0.6, 10)
        want = want + factor * F.cross_entropy(logits, torch.where(hard, target, IGNORE_INDEX), weight=weight,
                                               ignore_index=IGNORE_INDEX)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    plain = seg_loss(outputs, target, weight, 0.4)
    assert got.item() != pytest.approx(plain.item(), rel=1e-3)      # mining changed what was averaged


def test_batch_without_labels_gives_zero_loss_with_a_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), IGNORE_INDEX)
    loss = seg_loss((logits, logits, logits), target, None, 0.5, ohem_thresh=0.7)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
