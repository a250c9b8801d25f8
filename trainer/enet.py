"""ENet as in the paper's appendix (Paszke et al. 2016, shortened stages 2 and 3).

Stage layout at a 512x512 input (paper appendix):

====  ==================  ============  ==============
 st.  name                type          output
====  ==================  ============  ==============
 0    initial             initial       256x256x16
 1    bneck1.0            downsampling  128x128x64
 1    bneck1.1-1.4        regular       128x128x64
 2    bneck2.0            downsampling  64x64x128
 2    bneck2.1-2.4        reg/dil2/asym5/dil4   64x64x128
 3    bneck3.1-3.4        reg/dil8/asym5/dil16  64x64x128
 4    bneck4.0            upsampling    128x128x64
 4    bneck4.1-4.2        regular       128x128x64
 5    bneck5.0            upsampling    256x256x16
 5    bneck5.1            regular       256x256x16
 6    bneck6.0            upsampling    512x512x16
 -    classifier          1x1 conv      512x512x13
====  ==================  ============  ==============

Every convolution is followed by batch norm (the classifier conv has a bias
instead).  Deviation from the original ENet, kept for a simple, fast ONNX graph:
the upsampling bottlenecks' main branch uses a 1x1 conv + nearest-neighbour x2
instead of max-unpooling with the encoder's pooling indices (ORT's MaxUnpool is
slow and the legacy exporter cannot export it).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["ENet", "STAGE_SHAPES", "count_params", "count_macs"]

#: (channels, downsampling factor) of each stage's output, from the appendix.
STAGE_SHAPES = {
    "initial": (16, 2), "stage1": (64, 4), "stage2": (128, 8), "stage3": (128, 8),
    "stage4": (64, 4), "stage5": (16, 2), "stage6": (16, 1), "classifier": (13, 1),
}


def _act(variant: str, channels: int) -> nn.Module:
    if variant == "prelu":
        return nn.PReLU(channels)
    if variant == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"unknown activation variant {variant!r}: expected 'prelu' or 'relu'")


def _cbr(cin, cout, k, variant, stride=1, padding=0, dilation=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout), _act(variant, cout))


class InitialBlock(nn.Module):
    def __init__(self, cout=16, variant="prelu"):
        super().__init__()
        self.conv = nn.Conv2d(3, cout - 3, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2, 2)
        self.bn = nn.BatchNorm2d(cout)
        self.act = _act(variant, cout)

    def forward(self, x):
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], 1)))


class RegularBottleneck(nn.Module):
    """1x1 reduce -> 3x3 (or dilated, or 5x1+1x5 asymmetric) -> 1x1 expand, + identity."""

    def __init__(self, ch, variant="prelu", dilation=1, asymmetric=0, dropout=0.1):
        super().__init__()
        mid = ch // 4
        if asymmetric:
            k = asymmetric
            body = nn.Sequential(
                nn.Conv2d(mid, mid, (k, 1), padding=(k // 2, 0), bias=False), nn.BatchNorm2d(mid), _act(variant, mid),
                nn.Conv2d(mid, mid, (1, k), padding=(0, k // 2), bias=False), nn.BatchNorm2d(mid), _act(variant, mid))
        else:
            body = _cbr(mid, mid, 3, variant, padding=dilation, dilation=dilation)
        self.ext = nn.Sequential(
            _cbr(ch, mid, 1, variant), body,
            nn.Conv2d(mid, ch, 1, bias=False), nn.BatchNorm2d(ch), nn.Dropout2d(dropout))
        self.act = _act(variant, ch)

    def forward(self, x):
        return self.act(x + self.ext(x))


class DownsamplingBottleneck(nn.Module):
    """Main: 2x2 max pool + zero channel padding. Ext: 2x2/2 conv -> 3x3 -> 1x1."""

    def __init__(self, cin, cout, variant="prelu", dropout=0.1):
        super().__init__()
        mid = cin // 4
        self.pad = cout - cin
        self.pool = nn.MaxPool2d(2, 2)
        self.ext = nn.Sequential(
            _cbr(cin, mid, 2, variant, stride=2), _cbr(mid, mid, 3, variant, padding=1),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.Dropout2d(dropout))
        self.act = _act(variant, cout)

    def forward(self, x):
        main = F.pad(self.pool(x), (0, 0, 0, 0, 0, self.pad))
        return self.act(main + self.ext(x))


class UpsamplingBottleneck(nn.Module):
    """Main: 1x1 conv + BN + nearest x2. Ext: 1x1 -> 3x3/2 transposed conv -> 1x1."""

    def __init__(self, cin, cout, variant="prelu", dropout=0.1):
        super().__init__()
        mid = max(cin // 4, 4)
        self.main = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.ext = nn.Sequential(
            _cbr(cin, mid, 1, variant),
            nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(mid), _act(variant, mid),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.Dropout2d(dropout))
        self.act = _act(variant, cout)

    def forward(self, x):
        main = F.interpolate(self.main(x), scale_factor=2.0, mode="nearest")
        return self.act(main + self.ext(x))


class ENet(nn.Module):
    """The appendix ENet. Input float NCHW (normalised), output logits [N, 13, H, W].

    H and W must be multiples of 8.  ``variant`` picks PReLU (ENet) or ReLU.
    """

    def __init__(self, num_classes: int = 13, variant: str = "prelu", dropout: float = 0.1):
        super().__init__()
        v, d1, d = variant, dropout / 10, dropout
        self.variant = variant
        self.initial = InitialBlock(16, v)
        self.stage1 = nn.Sequential(DownsamplingBottleneck(16, 64, v, d1),
                                    *[RegularBottleneck(64, v, dropout=d1) for _ in range(4)])
        self.stage2 = nn.Sequential(
            DownsamplingBottleneck(64, 128, v, d),
            RegularBottleneck(128, v, dropout=d), RegularBottleneck(128, v, dilation=2, dropout=d),
            RegularBottleneck(128, v, asymmetric=5, dropout=d), RegularBottleneck(128, v, dilation=4, dropout=d))
        self.stage3 = nn.Sequential(
            RegularBottleneck(128, v, dropout=d), RegularBottleneck(128, v, dilation=8, dropout=d),
            RegularBottleneck(128, v, asymmetric=5, dropout=d), RegularBottleneck(128, v, dilation=16, dropout=d))
        self.stage4 = nn.Sequential(UpsamplingBottleneck(128, 64, v, d1),
                                    RegularBottleneck(64, v, dropout=d1), RegularBottleneck(64, v, dropout=d1))
        self.stage5 = nn.Sequential(UpsamplingBottleneck(64, 16, v, d1), RegularBottleneck(16, v, dropout=d1))
        self.stage6 = UpsamplingBottleneck(16, 16, v, 0.0)
        self.classifier = nn.Conv2d(16, num_classes, 1)

    def stages(self, x):
        """Yield (name, output) of every stage (used by the shape tests)."""
        for name in ("initial", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "classifier"):
            x = getattr(self, name)(x)
            yield name, x

    def forward(self, x):
        for _, x in self.stages(x):
            pass
        return x


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, size: int = 512) -> float:
    """Multiply-accumulates of one forward pass at size x size (FlopCounterMode / 2).

    The network is fully convolutional, so MACs scale exactly with the pixel count:
    count_macs(m, 64) * 64 == count_macs(m, 512)."""
    from torch.utils.flop_counter import FlopCounterMode
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, 3, size, size))
    model.train(was)
    return fc.get_total_flops() / 2
