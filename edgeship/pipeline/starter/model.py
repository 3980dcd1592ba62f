"""The starter project's model: a small image classifier, so that `edgeship init && edgeship build` runs
as written in an empty folder. Replace `build` with a function that returns your own model (an
nn.Module in eval mode, with its trained weights loaded), point `source` in edgeship.toml at it, and
put samples of your model's real inputs in `calibration/` (images, or a .npz with one array per input)."""

import torch
from torch import nn


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())


def build() -> nn.Module:
    torch.manual_seed(0)  # untrained weights, fixed: your model loads its own, e.g. model.load_state_dict(...)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        _block(16, 32, 2), _block(32, 64, 2), _block(64, 64, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    return model.eval()
