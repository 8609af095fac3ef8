"""Every loss against values computed by hand on two or four pixels."""

from __future__ import annotations

import math

import pytest
import torch

from tuner.core.losses import LOSSES, get_loss, label_boundary, ohem_cross_entropy

E2 = math.exp(2)
P1 = E2 / (E2 + 1)  # softmax([2, 0])[0]


def two_pixels():
    """Pixel 0: logits [0, 0]; pixel 1: logits [2, 0]; both labelled class 0; plus an ignored
    pixel with wild logits that must not matter."""
    logits = torch.tensor([[0.0, 2.0, 50.0], [0.0, 0.0, -50.0]]).reshape(1, 2, 1, 3)
    target = torch.tensor([[[0, 0, 255]]])
    return logits.requires_grad_(), target


def test_cross_entropy_by_hand():
    logits, target = two_pixels()
    expected = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    assert get_loss("ce")(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_focal_by_hand():
    logits, target = two_pixels()
    expected = (0.5**2 * math.log(2) + (1 - P1) ** 2 * -math.log(P1)) / 2
    assert get_loss("focal")(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_dice_by_hand():
    logits, target = two_pixels()
    class0 = (2 * (0.5 + P1) + 1) / ((0.5 + P1) + 2 + 1)
    class1 = 1 / ((0.5 + 1 - P1) + 1)  # absent from the target: smoothing keeps it finite
    expected = 1 - (class0 + class1) / 2
    assert get_loss("dice")(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_ce_dice_is_samed_mix():
    logits, target = two_pixels()
    mix = 0.2 * get_loss("ce")(logits, target) + 0.8 * get_loss("dice")(logits, target)
    assert get_loss("ce_dice")(logits, target).item() == pytest.approx(mix.item(), rel=1e-6)


def test_lovasz_by_hand():
    logits, target = two_pixels()
    # One class present; errors sorted [0.5, 1 - P1]; Jaccard gradient [0.5, 0.5].
    expected = 0.5 * 0.5 + 0.5 * (1 - P1)
    assert get_loss("lovasz")(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_ohem_keeps_only_hard_pixels_unless_min_kept():
    logits, target = two_pixels()
    # Pixel 0 has p=0.5 < 0.7 (hard); pixel 1 has p=0.88 (easy).
    hard_only = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=1)
    assert hard_only.item() == pytest.approx(math.log(2), rel=1e-6)
    both = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=2)
    assert both.item() == pytest.approx(get_loss("ce")(logits, target).item(), rel=1e-6)


def test_boundary_ce_weights_pixels_near_a_label_change():
    a = [1.0, 2.0, -1.0, -3.0, 0.5, 1.5, -2.0, 0.0, 3.0, -0.5]
    target = [0] * 5 + [1] * 5
    logits = torch.tensor([a, [0.0] * 10]).reshape(1, 2, 1, 10)
    ce = [
        math.log(1 + math.exp(-x)) if t == 0 else math.log(1 + math.exp(x))
        for x, t in zip(a, target)
    ]
    # Default radius 3: pixels 2..7 lie within 3 px of the change between 4 and 5 -> weight 5.
    weights = [1, 1, 5, 5, 5, 5, 5, 5, 1, 1]
    expected = sum(w * c for w, c in zip(weights, ce)) / sum(weights)
    value = get_loss("boundary_ce")(logits, torch.tensor([[target]])).item()
    assert value == pytest.approx(expected, rel=1e-6)


def test_label_boundary_ignores_void_neighbours():
    target = torch.tensor([[[0, 0, 255, 255], [0, 0, 1, 1]]])
    edge = label_boundary(target, radius=1)[0]
    # Touching 255 does not make a boundary; (0,1) and (1,1) touch class 1 at (1,2).
    assert edge.tolist() == [[False, True, False, False], [False, True, True, False]]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_finite_when_all_pixels_are_ignored(name):
    logits = torch.randn(2, 19, 8, 8, requires_grad=True)
    target = torch.full((2, 8, 8), 255)
    loss = get_loss(name)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_finite_with_absent_classes_and_has_gradient(name):
    logits = torch.randn(2, 19, 16, 16, requires_grad=True)
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[:, :4] = 3
    target[:, -2:] = 255  # only classes 0 and 3 present, some pixels ignored
    loss = get_loss(name)(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # Ignored pixels get no gradient.
    assert logits.grad[:, :, -2:].abs().sum() == 0


def test_unknown_loss_names_choices():
    with pytest.raises(ValueError, match="unknown loss 'hinge'.*boundary_ce"):
        get_loss("hinge")


def _lovasz_sorted(logits, target):
    """The reference Lovász-softmax (Berman et al.): one sort per present class."""
    probs = torch.softmax(logits, 1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    labels = target.reshape(-1)
    keep = labels != 255
    probs, labels = probs[keep], labels[keep]
    per_class = []
    for c in labels.unique():
        fg = (labels == c).to(probs.dtype)
        errors, order = (fg - probs[:, c]).abs().sort(descending=True)
        sorted_fg = fg[order]
        total = sorted_fg.sum()
        jaccard = 1 - (total - sorted_fg.cumsum(0)) / (total + (1 - sorted_fg).cumsum(0))
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
        per_class.append(torch.dot(errors, jaccard))
    return torch.stack(per_class).mean()


def test_bucketed_lovasz_matches_the_sorted_reference():
    torch.manual_seed(0)
    logits = (torch.randn(2, 19, 48, 64, dtype=torch.float64) * 3).requires_grad_()
    target = torch.randint(0, 19, (2, 48, 64))
    target[:, :6] = 255
    target[target == 4] = 1  # an absent class
    reference = _lovasz_sorted(logits, target)
    (ref_grad,) = torch.autograd.grad(reference, logits)
    ours = get_loss("lovasz")(logits, target)
    (our_grad,) = torch.autograd.grad(ours, logits)
    assert ours.item() == pytest.approx(reference.item(), abs=1 / 16384)
    # Ties inside a bucket share its gradient, a valid subgradient close to the sorted one.
    cosine = torch.nn.functional.cosine_similarity(our_grad.flatten(), ref_grad.flatten(), dim=0)
    assert cosine > 0.97
    finer = get_loss("lovasz")(logits, target, bins=2**20)
    (fine_grad,) = torch.autograd.grad(finer, logits)
    assert (
        torch.nn.functional.cosine_similarity(fine_grad.flatten(), ref_grad.flatten(), dim=0)
        > 0.999
    )
