"""fstrain.losses: adversarial terms, R1, Eq. 1 (semantic) and Eq. 2 (pair) with a real (randomly initialised) LPIPS."""
import math

import pytest
import torch
import torch.nn.functional as F

from fstrain.losses import (PairLoss, SemanticLoss, StylizationLoss, discriminator_adversarial_loss, eye_band,
                            eye_band_box, generator_adversarial_loss, identity_distance, lazy_regularization_ratio,
                            perceptual_distance, r1_penalty, resize_for_metric)


@pytest.fixture(scope="module")
def alex_lpips():
    import lpips
    torch.manual_seed(0)
    # pnet_rand: a random AlexNet backbone (no download); the package's own linear layers are real.
    return lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()


def test_adversarial_losses_match_logistic_formulas():
    zeros = torch.zeros(4, 1)
    assert generator_adversarial_loss(zeros).item() == pytest.approx(math.log(2))
    assert discriminator_adversarial_loss(zeros, zeros).item() == pytest.approx(2 * math.log(2))
    # G's loss falls as D believes its fakes more; D's loss falls as it separates real from fake.
    assert generator_adversarial_loss(torch.full((4, 1), 3.0)) < generator_adversarial_loss(zeros)
    assert discriminator_adversarial_loss(torch.full((4, 1), 3.0), torch.full((4, 1), -3.0)).item() == \
        pytest.approx(2 * math.log1p(math.exp(-3.0)), rel=1e-6)


def test_r1_penalty_is_squared_input_gradient_and_backpropagates():
    weight = torch.randn(3 * 8 * 8, requires_grad=True)
    images = torch.randn(5, 3, 8, 8, requires_grad=True)
    logits = (images.flatten(1) * weight).sum(1, keepdim=True)     # linear D: dD/dx = weight for every sample
    penalty = r1_penalty(logits, images)
    assert penalty.item() == pytest.approx(weight.detach().pow(2).sum().item(), rel=1e-5)
    (grad_w,) = torch.autograd.grad(penalty, weight)                # second order: d|w|^2/dw = 2w
    assert torch.allclose(grad_w, 2 * weight.detach(), atol=1e-5)


def test_lazy_regularization_ratio():
    assert lazy_regularization_ratio(16) == pytest.approx(16 / 17)
    assert lazy_regularization_ratio(0) == 1.0


def test_resize_for_metric_bounds_sizes():
    assert resize_for_metric(torch.zeros(1, 3, 16, 16)).shape[-1] == 64
    assert resize_for_metric(torch.zeros(1, 3, 128, 128)).shape[-1] == 128
    assert resize_for_metric(torch.zeros(1, 3, 1024, 1024)).shape[-1] == 256


def test_identity_distance_is_one_minus_cosine():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [0.0, -1.0]])
    assert torch.allclose(identity_distance(a, b), torch.tensor([0.0, 2.0]))


def test_semantic_loss_zero_for_identical_and_grows_with_difference(alex_lpips):
    torch.manual_seed(1)
    base = torch.rand(3, 3, 32, 32) * 2 - 1
    near = (base + 0.05 * torch.randn_like(base)).clamp(-1, 1)
    far = (base + 0.8 * torch.randn_like(base)).clamp(-1, 1)
    loss = SemanticLoss(alex_lpips)
    assert loss(base, base).item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < loss(base, near).item() < loss(base, far).item()


def test_semantic_loss_adds_weighted_identity_term(alex_lpips):
    torch.manual_seed(2)
    embed = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 16))
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    b = torch.rand(2, 3, 32, 32) * 2 - 1
    terms = SemanticLoss(alex_lpips, identity=embed, lambda_id=0.5).terms(a, b)
    expected_id = identity_distance(embed(a), embed(b)).mean()
    assert torch.allclose(terms.identity, expected_id)
    assert torch.allclose(terms.total, terms.perceptual + 0.5 * expected_id)
    # Without an identity net the term is reported as zero and the total is pure LPIPS.
    plain = SemanticLoss(alex_lpips, lambda_id=0.5).terms(a, b)
    assert plain.identity.item() == 0.0 and torch.allclose(plain.total, plain.perceptual)
    per_sample = SemanticLoss(alex_lpips, identity=embed, reduction="none")(a, b)
    assert per_sample.shape == (2,)


def test_eye_band_is_the_template_eye_region_enlarged_to_64_rows():
    # 190..280 x 140..372 of the 512-unit template: at 64 px rows 23..35, columns 17..46.
    assert eye_band_box(64) == (23, 36, 17, 47)
    assert eye_band_box(512) == (190, 281, 140, 373)
    images = torch.zeros(2, 3, 64, 64)
    images[:, :, 23:36, 17:47] = 1.0                         # the band is white, the rest black
    band = eye_band(images)
    assert band.shape == (2, 3, 64, round(30 * 64 / 13))     # aspect kept
    assert torch.allclose(band, torch.ones_like(band))       # nothing from outside the band
    big = torch.rand(1, 3, 512, 512)
    assert torch.equal(eye_band(big), big[..., 190:281, 140:373])   # already tall enough: cropped, not resized


def test_semantic_eye_term_sees_only_the_eye_band_and_adds_with_its_weight(alex_lpips):
    torch.manual_seed(5)
    base = torch.rand(2, 3, 64, 64) * 2 - 1
    glasses = base.clone()
    glasses[:, :, 28:30, 20:44] = -1.0                       # a dark frame line across the eyes
    chin = base.clone()
    chin[:, :, 54:56, 20:44] = -1.0                          # the same line below the mouth
    loss = SemanticLoss(alex_lpips, lambda_id=0.0, lambda_eyes=2.0)
    with_glasses, on_chin = loss.terms(base, glasses), loss.terms(base, chin)
    assert with_glasses.eyes.item() > 0 and on_chin.eyes.item() == 0.0
    assert torch.allclose(with_glasses.total, with_glasses.perceptual + 2.0 * with_glasses.eyes)
    # Enlarged, the 2-row line weighs more in the band than in the whole face.
    assert with_glasses.eyes.item() > with_glasses.perceptual.item()
    # Off (the paper's L_sem): reported as zero, total unchanged.
    off = SemanticLoss(alex_lpips, lambda_id=0.0).terms(base, glasses)
    assert off.eyes.item() == 0.0 and torch.allclose(off.total, with_glasses.perceptual)


def test_pair_loss_gradient_moves_render_towards_style(alex_lpips):
    torch.manual_seed(3)
    style = torch.rand(2, 3, 32, 32) * 2 - 1
    render = torch.zeros(2, 3, 32, 32, requires_grad=True)
    loss_fn = PairLoss(alex_lpips)
    before = loss_fn(render, style).item()
    opt = torch.optim.Adam([render], lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        loss_fn(render, style).backward()
        opt.step()
    assert loss_fn(render, style).item() < 0.7 * before


def test_pair_loss_resizes_style_images_to_render_size(alex_lpips):
    style_big = torch.rand(1, 3, 64, 64) * 2 - 1
    style_small = F.interpolate(style_big, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    render = torch.rand(1, 3, 32, 32) * 2 - 1
    assert perceptual_distance(alex_lpips, render, style_big).item() == pytest.approx(
        perceptual_distance(alex_lpips, render, style_small).item(), abs=1e-6)


def test_stylization_loss_names_the_terms_of_eq3_with_the_inline_numbers(alex_lpips):
    """Eq. 3 as the training loop assembled it inline before the loss object, bit for bit, in every mode."""
    torch.manual_seed(4)
    embed = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 16))
    logits = torch.randn(2, 1)
    reference, fake, rendered, style = (torch.rand(2, 3, 32, 32) * 2 - 1 for _ in range(4))
    semantic, pair = SemanticLoss(alex_lpips, embed, lambda_id=0.1), PairLoss(alex_lpips)
    lambda_sem, lambda_pair = 2.5, 0.75
    for use_sem, use_pair in [(False, False), (True, False), (False, True), (True, True)]:
        loss = StylizationLoss(semantic if use_sem else None, pair if use_pair else None, lambda_sem=lambda_sem,
                               lambda_pair=lambda_pair)
        terms = loss.g_main(logits, reference=reference, fake=fake, rendered=rendered, style_images=style)
        expected = {"g_adv": generator_adversarial_loss(logits)}
        total = expected["g_adv"]
        if use_sem:
            sem = semantic.terms(reference, fake)
            total = total + lambda_sem * sem.total
            expected.update(sem=sem.total, sem_lpips=sem.perceptual, sem_id=sem.identity, sem_eyes=sem.eyes)
        if use_pair:
            expected["pair"] = pair(rendered, style)
            total = total + lambda_pair * expected["pair"]
        expected["g_total"] = total
        assert list(terms) == list(expected)
        for name, value in expected.items():
            assert torch.equal(terms[name], value), (use_sem, use_pair, name)
    d_real, d_fake = torch.randn(3, 1), torch.randn(3, 1)
    assert torch.equal(loss.d_main(d_real, d_fake)["d_adv"], discriminator_adversarial_loss(d_real, d_fake))
    images = torch.rand(2, 3, 8, 8, requires_grad=True)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 1))
    reg = StylizationLoss(r1_gamma=10.0, r1_every=16).d_reg(net(images), images)
    assert torch.equal(reg["r1"], r1_penalty(net(images), images))
    assert torch.equal(reg["d_reg"], 10.0 / 2 * reg["r1"] * 16)
    with pytest.raises(ValueError, match="semantic term needs"):
        StylizationLoss(semantic).g_main(logits, fake=fake)
