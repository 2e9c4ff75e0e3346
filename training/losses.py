"""Training losses: perceptual (features of a network trained here), hinge GAN with a patch discriminator,
and the MaskGIT masked-token loss."""

import math

import torch
import torch.nn.functional as F
from torch import nn


class PerceptualLoss(nn.Module):
    """Distance between channel-normalised feature maps of a frozen network (LPIPS-style, no learned weights).

    No pretrained network can be downloaded here, so the features come from the Fashion-MNIST classifier
    trained in this repository (``training.models.FMNISTClassifier``) or any module with ``feature_maps(x) -> [maps]``.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def train(self, mode: bool = True):  # the feature network stays in eval mode (BatchNorm statistics)
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = x.new_zeros(())
        for fx, fy in zip(self.net.feature_maps(x), self.net.feature_maps(y), strict=True):
            loss = loss + (F.normalize(fx, dim=1) - F.normalize(fy, dim=1)).pow(2).sum(1).mean()
        return loss


class ClassKeptLoss(nn.Module):
    """KL(classifier(x) || classifier(recon)): the reconstruction should leave a frozen classifier of the data set
    as sure of each class as the original does (print, shape and texture that tell shirts from coats)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = F.log_softmax(self.net(x), dim=-1)
        return F.kl_div(F.log_softmax(self.net(recon), dim=-1), target, log_target=True, reduction="batchmean")

    def label_loss(self, recon: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the classifier on the reconstruction against the image's own label: where the
        classifier misreads the original (7% of test images), KL would copy its mistake; the label does not."""
        return F.cross_entropy(self.net(recon), labels)


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: strided convs with GroupNorm and LeakyReLU, one logit per patch."""

    def __init__(self, width: int = 64, layers: int = 2):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = width
        for _ in range(layers - 1):
            mods += [nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.GroupNorm(32, ch * 2), nn.LeakyReLU(0.2)]
            ch *= 2
        mods.append(nn.Conv2d(ch, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)  # (B, 1, h, w)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator."""
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the generator (the tokenizer's decoder)."""
    return -fake_logits.mean()


def arccos_mask(tokens: torch.Tensor, mask_id: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskGIT training mask: ratio arccos(U)/(pi/2) per sequence, at least one token. -> (masked ids, mask)."""
    b, n = tokens.shape
    u = torch.rand(b, generator=rng, device=tokens.device)
    ratio = torch.acos(u) / (math.pi / 2)  # (B,) in (0, 1]
    count = (ratio * n).round().clamp(min=1)  # (B,)
    order = torch.rand(b, n, generator=rng, device=tokens.device).argsort(dim=1).argsort(dim=1)  # ranks
    mask = order < count[:, None]  # (B, N)
    return torch.where(mask, torch.full_like(tokens, mask_id), tokens), mask


def masked_token_loss(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, label_smoothing: float, unmasked_weight: float
) -> torch.Tensor:
    """Cross-entropy over all positions, masked ones weighted 1 and visible ones ``unmasked_weight``."""
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), label_smoothing=label_smoothing, reduction="none")
    w = torch.where(mask.flatten(), 1.0, unmasked_weight)
    return (ce * w).sum() / w.sum()
