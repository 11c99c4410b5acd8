"""Models a user would bring, for ``generator: tests.factory_models:generator`` (the factory contract)."""

import torch
from torch import nn
import torch.nn.functional as F


class TinyGenerator(nn.Module):
    """Not a gandissect architecture: z_dim instead of latent_dim, no resolution attribute, plain layers."""

    def __init__(self, z_dim: int = 16):
        super().__init__()
        self.z_dim = z_dim
        self.fc = nn.Linear(z_dim, 32 * 4 * 4)
        self.block1 = nn.Conv2d(32, 24, 3, padding=1)   # 8x8 after the upsampling before it
        self.block2 = nn.Conv2d(24, 16, 3, padding=1)   # 16x16
        self.block3 = nn.Conv2d(16, 8, 3, padding=1)    # 32x32
        self.rgb = nn.Conv2d(8, 3, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.fc(z.flatten(1)), 0.2).view(-1, 32, 4, 4)
        for conv in (self.block1, self.block2, self.block3):
            x = F.leaky_relu(conv(F.interpolate(x, scale_factor=2)), 0.2)
        return torch.tanh(self.rgb(x))


class TinyDiscriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.LeakyReLU(0.2))
        self.head = nn.Linear(16, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images).mean(dim=(2, 3))).squeeze(1)


def generator() -> nn.Module:
    torch.manual_seed(0)
    return TinyGenerator()


def discriminator() -> nn.Module:
    torch.manual_seed(1)
    return TinyDiscriminator()


def not_a_module():
    return 3
