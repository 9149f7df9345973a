"""AAANetResNet50: shapes at every occlusion point, the hardest occluded copy against copies
made by hand, M_occ, the stage-3 mask, parameter groups, freezing and ImageNet weights."""

import copy
import functools
import math

import pytest
import torch

from sharpattn.models import AAANetResNet50, load_imagenet_weights, true_class_probability

pytest.importorskip("torchvision")


@pytest.fixture(autouse=True)
def one_thread():
    """These tests are small; on a busy shared 2-core machine torch's two threads spend most of
    their time waiting on each other (50x slower measured), one thread does not."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# f_r of 64 x 32 images after conv modules 2..5, and a grid that fits each map.
SMALL = {2: ((256, 16, 8), (4, 4)), 3: ((512, 8, 4), (4, 4)), 4: ((1024, 4, 2), (4, 2)),
         5: ((2048, 2, 1), (2, 1))}


@functools.lru_cache(maxsize=None)
def _built(k, grid, options):
    torch.manual_seed(0)
    model = AAANetResNet50(7, occlusion_after=k, grid=grid, attention_channels=16, **dict(options))
    # Spread the logits so the 16 copies get clearly different probabilities.
    torch.nn.init.normal_(model.classifier.weight, std=0.03)
    return model


def model_at(k, grid=(4, 4), **options):
    """A fresh copy of a model built once per configuration (building a ResNet-50 takes
    seconds on a busy machine; copying it does not)."""
    return copy.deepcopy(_built(k, tuple(grid), tuple(sorted(options.items()))))


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_shapes_at_every_module(k):
    (channels, h, w), grid = SMALL[k]
    model = model_at(k, grid=grid).train()
    images = torch.randn(2, 3, 64, 32)
    f_r = model.middle(images)
    assert f_r.shape == (2, channels, h, w)
    m_att = model.attention(f_r)
    assert m_att.shape == (2, h, w) and ((m_att > 0) & (m_att < 1)).all()
    assert model.rest(f_r).shape == (2, 2048)
    assert model.classify(model.rest(f_r)).shape == (2, 7)
    assert model.logits(images).shape == (2, 7)
    assert model(images).shape == (2, 2048)
    cell, probs = model.hardest_occlusion(f_r, torch.tensor([1, 6]))
    assert cell.shape == (2,) and cell.dtype == torch.long
    assert probs.shape == (2, grid[0] * grid[1])
    assert model.occlusion_target(cell, f_r).shape == (2, h, w)
    assert model.binary_mask(m_att).shape == (2, 1, h, w)


def test_module_numbering_follows_resnet():
    # After module 3 (conv3_x) is torchvision's layer2: the feature map layer2 returns.
    model = model_at(3).eval()
    images = torch.randn(1, 3, 64, 32)
    seen = {}
    model.layer2.register_forward_hook(lambda m, a, out: seen.setdefault("f", out))
    model.logits(images)
    torch.testing.assert_close(model.middle(images), seen["f"])
    assert len(model.attention_head[0].weight[0]) == 512


def cells(size, parts):
    """Cell boundaries by the formula of docs/spec.md section 4, written out here independently."""
    return [(math.floor(i * size / parts), math.floor((i + 1) * size / parts))
            for i in range(parts)]


def probs_by_hand(model, f_r, targets, grid):
    """The copies materialised one by one (clone, zero a cell), scored in eval mode."""
    model.eval()
    out = torch.empty(f_r.shape[0], grid[0] * grid[1])
    with torch.no_grad():
        for a, (r0, r1) in enumerate(cells(f_r.shape[2], grid[0])):
            for b, (c0, c1) in enumerate(cells(f_r.shape[3], grid[1])):
                copy = f_r.clone()
                copy[:, :, r0:r1, c0:c1] = 0
                logits = model.classifier(model.rest(copy))
                probs = torch.softmax(logits, 1)
                out[:, a * grid[1] + b] = probs[torch.arange(len(targets)), targets]
    return out


@pytest.mark.parametrize("k, shape", [(3, (3, 512, 8, 6)), (5, (3, 2048, 7, 7))])
def test_hardest_copy_equals_copies_made_by_hand(k, shape):
    model = model_at(k).train()  # scoring must not depend on (or touch) train-mode BN
    torch.manual_seed(1)
    f_r = torch.randn(shape).relu()
    targets = torch.tensor([0, 4, 6])
    running = {n: b.clone() for n, b in model.named_buffers()}
    cell, probs = model.hardest_occlusion(f_r, targets)
    assert model.training and model.layer4.training and model.dropout.training
    for n, b in model.named_buffers():
        assert torch.equal(b, running[n]), f"{n} changed while scoring the copies"
    expected = probs_by_hand(model, f_r, targets, (4, 4))
    torch.testing.assert_close(probs, expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(cell, expected.argmin(1))
    # The copies really differ (relative spread), so the argmin means something.
    assert (probs.log().std(1) > 0.01).all()


def test_chunked_search_is_the_same():
    model = model_at(3)
    f_r = torch.randn(5, 512, 8, 4).relu()
    targets = torch.tensor([0, 1, 2, 3, 4])
    cell, probs = model.hardest_occlusion(f_r, targets)
    cell2, probs2 = model.hardest_occlusion(f_r, targets, chunk=2)
    torch.testing.assert_close(probs, probs2, rtol=1e-4, atol=1e-6)
    assert torch.equal(cell, cell2)


def test_hardest_occlusion_rejects_bad_targets():
    model = model_at(5, grid=(2, 1))
    f_r = torch.rand(2, 2048, 2, 1)
    with pytest.raises(ValueError, match="targets"):
        model.hardest_occlusion(f_r, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="targets"):
        model.hardest_occlusion(f_r, torch.tensor([0]))


def test_occlusion_targets():
    f_r = torch.rand(2, 8, 8, 4)
    cell = torch.tensor([0, 5])  # (0, 0) and (1, 1) on a 4 x 4 grid of 2 x 1 cells
    keep = model_at(3, occlusion_target="keep").occlusion_target(cell, f_r)
    expected = torch.ones(2, 8, 4)
    expected[0, 0:2, 0:1] = 0
    expected[1, 2:4, 1:2] = 0
    assert torch.equal(keep, expected)
    response = model_at(3).occlusion_target(cell, f_r)
    mean = f_r.mean(1)
    torch.testing.assert_close(response, mean / mean.amax((1, 2), keepdim=True) * expected)
    assert not response.requires_grad


def test_binary_mask_rules():
    m_att = torch.tensor([[[0.9, 0.2, 0.5], [0.1, 0.7, 0.3]]])
    high = torch.tensor([[[1, 0, 1], [0, 1, 0]]], dtype=torch.bool)
    mask = model_at(3).binary_mask(m_att)
    assert torch.equal(mask, (~high).float().unsqueeze(1))  # occlude attention >= 0.5
    low = model_at(3, mask_zeros="low").binary_mask(m_att)
    assert torch.equal(low, high.float().unsqueeze(1))
    top = model_at(3, mask_rule="top", mask_fraction=1 / 3).binary_mask(m_att)
    assert torch.equal(top, torch.tensor([[[[0.0, 1, 1], [1, 0, 1]]]]))  # the 2 highest of 6


def test_table4_mask_occludes_the_third_with_highest_response():
    model = model_at(3, mask_source="response", mask_rule="top", mask_fraction=1 / 3)
    f_r = torch.rand(2, 4, 6, 8)
    mask = model.binary_mask(None, f_r)
    assert (mask == 0).flatten(1).sum(1).tolist() == [16, 16]
    response = f_r.mean(1).flatten(1)
    for n in range(2):
        occluded = response[n][mask[n].flatten() == 0]
        kept = response[n][mask[n].flatten() == 1]
        assert occluded.min() >= kept.max()
    with pytest.raises(ValueError, match="f_r"):
        model.binary_mask(torch.rand(2, 6, 8))


def test_parameter_groups_disjoint_and_covering():
    model = model_at(3)
    att, base = model.attention_parameters(), model.base_parameters()
    ids_att, ids_base = {id(p) for p in att}, {id(p) for p in base}
    assert ids_att and ids_base and not ids_att & ids_base
    assert ids_att | ids_base == {id(p) for p in model.parameters()}
    assert {id(p) for p in model.attention_head.parameters()} == ids_att
    assert id(model.classifier.weight) in ids_base and id(model.conv1.weight) in ids_base


def test_frozen_base_does_not_change_in_a_stage2_step():
    from sharpattn.reid.losses import attention_assignment_loss

    model = model_at(3).freeze_base().train()
    assert not model.layer1.training and model.attention_head.training
    before = {n: t.clone() for n, t in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.attention_parameters(), lr=0.1)
    images, targets = torch.randn(2, 3, 64, 32), torch.tensor([1, 2])
    f_r = model.middle(images)
    cell, _ = model.hardest_occlusion(f_r, targets)
    loss = attention_assignment_loss(model.attention(f_r), model.occlusion_target(cell, f_r))
    loss.mean().backward()
    optimizer.step()
    after = model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith("attention_head.") for n in changed), changed
    assert all(p.grad is None for p in model.base_parameters())
    model.freeze_base(False).train()
    assert model.layer1.training and all(p.requires_grad for p in model.parameters())


def test_imagenet_weights_fill_the_backbone(tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(3)
    source = resnet50(weights=None).state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save(source, path)
    model = model_at(3)
    head = model.attention_head[0].weight.clone()
    loaded = load_imagenet_weights(model, path)
    state = model.state_dict()
    assert len(loaded) == len(source) - 2  # all but torchvision's fc.weight / fc.bias
    for key in ("conv1.weight", "layer3.5.bn3.running_var", "layer4.2.conv3.weight"):
        assert torch.equal(state[key], source[key])
    assert torch.equal(model.attention_head[0].weight, head)  # new parts untouched


def test_retrieval_option_and_bad_arguments():
    images = torch.randn(2, 3, 64, 32)
    assert model_at(3, retrieval="logits").eval()(images).shape == (2, 7)
    for kw in ({"occlusion_after": 1}, {"occlusion_after": 6}, {"attention_norm": "softmax"},
               {"occlusion_target": "cell"}, {"mask_rule": "random"}, {"dropout": 1.0}):
        with pytest.raises(ValueError):
            AAANetResNet50(5, **kw)


def test_true_class_probability():
    logits = torch.tensor([[0.0, math.log(3.0)], [2.0, 2.0]])
    p = true_class_probability(logits, torch.tensor([1, 0]))
    torch.testing.assert_close(p, torch.tensor([0.75, 0.5]))
