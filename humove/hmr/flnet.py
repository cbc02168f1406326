"""FLNet, CameraHMR's camera model: HRNet-W48 → pooled 720 features → field of view, written for humove.

Module names and shapes follow the official `cam_model_cleaned.ckpt` (pixelite1201/CameraHMR at 65d11a0:
`core/cam_model/fl_net.py`, `core/cam_model/backbone/hrnet.py`; HRNet after Sun et al. 2019), so its
`state_dict` loads with strict=True. The input is the whole frame letterboxed on white at 256×256
(see `preprocess.letterbox_for_flnet`); output (B, 2), of which [:, 1] is the vertical field of view
(radians).
As upstream, the forward path is fc1 → fc3 (`fc2`, `drop1` and HRNet's `final_layer` exist only so the
checkpoint's keys match). Cross-checked once against the upstream module with shared random weights:
the same 1874 state-dict entries and outputs equal to 2e-8.
"""

from __future__ import annotations

import torch
from torch import nn

from humove.hmr.sizes import HRNetConfig


def tiny_hrnet_config() -> HRNetConfig:
    return HRNetConfig(width=4, modules=(1, 1, 1), blocks=1, stem_blocks=1)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=0.1)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), _bn(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = _bn(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = _bn(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1 (×4 channels), with a projected shortcut when the width changes."""

    def __init__(self, cin: int, planes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, planes * 4, 1, bias=False), _bn(planes * 4))
            if cin != planes * 4
            else None
        )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class HighResolutionModule(nn.Module):
    """Parallel branches at 1/2^b resolution, then every branch receives the sum of all (fuse)."""

    def __init__(self, channels: list[int], blocks: int):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c) for _ in range(blocks)]) for c in channels
        )
        n = len(channels)
        fuse = []
        for i in range(n):
            row = []
            for j in range(n):
                if j > i:  # lower resolution → 1×1 conv, then upsample
                    row.append(
                        nn.Sequential(
                            nn.Conv2d(channels[j], channels[i], 1, 1, 0, bias=False),
                            nn.BatchNorm2d(channels[i]),
                            nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                        )
                    )
                elif j == i:
                    row.append(None)
                else:  # higher resolution → strided 3×3 convs, ReLU between them
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        cout = channels[i] if last else channels[j]
                        step = [nn.Conv2d(channels[j], cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout)]
                        if not last:
                            step.append(nn.ReLU(True))
                        steps.append(nn.Sequential(*step))
                    row.append(nn.Sequential(*steps))
            fuse.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse) if n > 1 else None
        self.relu = nn.ReLU(True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        if self.fuse_layers is None:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[i]
            for j, layer in enumerate(row):
                if j != i:
                    y = y + layer(xs[j])
            out.append(self.relu(y))
        return out


class HRNetBackbone(nn.Module):
    """(B, 3, 256, 256) → (B, 15·width, 8, 8): the four resolutions strided to the lowest, stacked."""

    def __init__(self, config: HRNetConfig):
        super().__init__()
        w = config.width
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = _bn(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(
            *[Bottleneck(64 if k == 0 else 256, 64) for k in range(config.stem_blocks)]
        )
        widths = [w, 2 * w, 4 * w, 8 * w]
        self.transition1 = self._transition([256], widths[:2])
        self.stage2 = nn.Sequential(
            *[HighResolutionModule(widths[:2], config.blocks) for _ in range(config.modules[0])]
        )
        self.transition2 = self._transition(widths[:2], widths[:3])
        self.stage3 = nn.Sequential(
            *[HighResolutionModule(widths[:3], config.blocks) for _ in range(config.modules[1])]
        )
        self.transition3 = self._transition(widths[:3], widths[:4])
        self.stage4 = nn.Sequential(
            *[HighResolutionModule(widths, config.blocks) for _ in range(config.modules[2])]
        )
        self.final_layer = nn.Conv2d(w, 24, 1)  # pose-heatmap head of HRNet, unused by FLNet
        self.downsample_stage_1 = self._strided(3, w)
        self.downsample_stage_2 = self._strided(2, 2 * w)
        self.downsample_stage_3 = self._strided(1, 4 * w)

    @staticmethod
    def _transition(previous: list[int], current: list[int]) -> nn.ModuleList:
        layers = []
        for i, c in enumerate(current):
            if i < len(previous):
                layers.append(_conv_bn(previous[i], c, 3, 1, True) if previous[i] != c else None)
            else:  # a new, lower-resolution branch from the last existing one
                layers.append(nn.Sequential(_conv_bn(previous[-1], c, 3, 2, True)))
        return nn.ModuleList(layers)

    @staticmethod
    def _strided(count: int, channels: int) -> nn.Sequential:
        layers = []
        for _ in range(count):
            layers += [
                nn.Conv2d(channels, channels, 3, 2, 1, bias=False),
                _bn(channels),
                nn.ReLU(inplace=True),
            ]
        return nn.Sequential(*layers)

    @staticmethod
    def _branch_inputs(transition: nn.ModuleList, ys: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(transition):
            if i < len(ys):
                out.append(ys[i] if layer is None else layer(ys[i]))
            else:
                out.append(layer(ys[-1]))
        return out

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        ys = self.stage2(self._branch_inputs(self.transition1, [x]))
        ys = self.stage3(self._branch_inputs(self.transition2, ys))
        ys = self.stage4(self._branch_inputs(self.transition3, ys))
        return torch.cat(
            [
                self.downsample_stage_1(ys[0]),
                self.downsample_stage_2(ys[1]),
                self.downsample_stage_3(ys[2]),
                ys[3],
            ],
            dim=1,
        )


class FLNet(nn.Module):
    """(B, 3, 256, 256) letterboxed normalised frame → (B, 2) field-of-view output ([:, 1] = vertical fov)."""

    def __init__(self, config: HRNetConfig | None = None):
        super().__init__()
        self.config = config or HRNetConfig()
        self.backbone = HRNetBackbone(self.config)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(self.config.feature_dim, 1024)
        self.drop1 = nn.Dropout()
        self.fc2 = nn.Linear(1024, 1024)
        self.drop2 = nn.Dropout()
        self.fc3 = nn.Linear(1024, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.avgpool(self.backbone(images)).flatten(1)
        return self.fc3(self.drop2(self.fc1(features)))
