"""Foreign segmentation models for the bring-your-own-model tests.

Real architectures written from their published definitions in plain torch (torchvision
does not import beside the CPU torch here; nothing is downloaded), random weights, small
inputs so the tests stay fast, exported with torch.onnx.export as users do: input float32
[1, 3, H, W] ImageNet-normalised, output logits [1, C, H, W]:

- LRASPP-MobileNetV3 (Howard et al. 2019, "Searching for MobileNetV3", sec. 6.3): a
  MobileNetV3-Large-style backbone (inverted residuals with squeeze-excite and hard-swish,
  shortened), the LR-ASPP head: a 1x1 conv + BN + ReLU branch times a global-pool sigmoid
  branch, upsampled, plus a 1x1 classifier on the stride-8 features;
- DeepLabV3 (Chen et al. 2017): a dilated ResNet-style backbone (output stride 8) and ASPP
  (1x1 conv, three 3x3 atrous convs at rates 12/24/36, image pooling), 1x1 classifier,
  bilinear upsampling to the input;
- U-Net (Ronneberger et al. 2015): two-conv blocks, max-pool down, transposed-conv up with
  skip concatenation (three levels, narrow).

Hand-built ONNX graphs (onnx.helper) cover the rest: NHWC float with a Softmax at the end,
a dynamic-size input, an int64 class map, fp16 in and out, a 19-class Cityscapes head, and
what must be refused (a classifier, external data, a custom-op domain, two inputs).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import List, Tuple

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIZE = (64, 96)  # (height, width): small, not square, so a swapped axis shows

# Cityscapes' 19 training classes with their palette (Cordts et al. 2016)
CITYSCAPES_CLASSES = [
    ("road", (128, 64, 128)), ("sidewalk", (244, 35, 232)), ("building", (70, 70, 70)), ("wall", (102, 102, 156)),
    ("fence", (190, 153, 153)), ("pole", (153, 153, 153)), ("traffic light", (250, 170, 30)),
    ("traffic sign", (220, 220, 0)), ("vegetation", (107, 142, 35)), ("terrain", (152, 251, 152)),
    ("sky", (70, 130, 180)), ("person", (220, 20, 60)), ("rider", (255, 0, 0)), ("car", (0, 0, 142)),
    ("truck", (0, 0, 70)), ("bus", (0, 60, 100)), ("train", (0, 80, 100)), ("motorcycle", (0, 0, 230)),
    ("bicycle", (119, 11, 32)),
]


def cityscapes_json() -> list:
    return [{"name": n, "colour": list(c)} for n, c in CITYSCAPES_CLASSES]


# --- torch architectures ------------------------------------------------------------------


def _torch_nets():
    import torch
    from torch import nn
    import torch.nn.functional as F

    def conv_bn(cin, cout, k=3, s=1, d=1, groups=1, act=nn.ReLU):
        layers = [nn.Conv2d(cin, cout, k, s, padding=d * (k - 1) // 2, dilation=d, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act())
        return nn.Sequential(*layers)

    class SqueezeExcite(nn.Module):
        def __init__(self, c):
            super().__init__()
            mid = max(8, c // 4)
            self.fc1, self.fc2 = nn.Conv2d(c, mid, 1), nn.Conv2d(mid, c, 1)

        def forward(self, x):
            s = F.adaptive_avg_pool2d(x, 1)
            return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))

    class InvertedResidual(nn.Module):
        """MobileNetV3 bneck: expand 1x1, depthwise kxk, optional SE, project 1x1."""

        def __init__(self, cin, exp, cout, k, s, se, act):
            super().__init__()
            self.res = s == 1 and cin == cout
            layers = [conv_bn(cin, exp, 1, act=act)] if exp != cin else []
            layers += [conv_bn(exp, exp, k, s, groups=exp, act=act)]
            if se:
                layers.append(SqueezeExcite(exp))
            layers.append(conv_bn(exp, cout, 1, act=None))
            self.body = nn.Sequential(*layers)

        def forward(self, x):
            y = self.body(x)
            return x + y if self.res else y

    class LRASPPMobileNetV3(nn.Module):
        """MobileNetV3-Large (first blocks of each stage, narrow) + the LR-ASPP head."""

        def __init__(self, classes=13):
            super().__init__()
            hs, re = nn.Hardswish, nn.ReLU
            self.stem = conv_bn(3, 16, 3, 2, act=hs)
            self.low = nn.Sequential(  # stride 8: the head's low-level features
                InvertedResidual(16, 16, 16, 3, 1, False, re),
                InvertedResidual(16, 64, 24, 3, 2, False, re),
                InvertedResidual(24, 72, 24, 3, 1, False, re),
                InvertedResidual(24, 72, 40, 5, 2, True, re),
            )
            self.high = nn.Sequential(  # stride 16 (the paper dilates the last stage instead of striding)
                InvertedResidual(40, 120, 40, 5, 1, True, re),
                InvertedResidual(40, 240, 80, 3, 2, False, hs),
                InvertedResidual(80, 200, 80, 3, 1, False, hs),
                InvertedResidual(80, 480, 112, 3, 1, True, hs),
                conv_bn(112, 160, 1, act=hs),
            )
            self.cbr = conv_bn(160, 128, 1, act=re)
            self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(160, 128, 1, bias=False), nn.Sigmoid())
            self.low_classifier = nn.Conv2d(40, classes, 1)
            self.high_classifier = nn.Conv2d(128, classes, 1)

        def forward(self, x):
            size = x.shape[-2:]
            low = self.low(self.stem(x))
            high = self.high(low)
            y = self.cbr(high) * self.scale(high)
            y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
            y = self.low_classifier(low) + self.high_classifier(y)
            return F.interpolate(y, size=size, mode="bilinear", align_corners=False)

    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, cout, s=1, d=1):
            super().__init__()
            self.body = nn.Sequential(conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, s, d), conv_bn(mid, cout, 1, act=None))
            self.skip = None if cin == cout and s == 1 else conv_bn(cin, cout, 1, s, act=None)

        def forward(self, x):
            return F.relu(self.body(x) + (x if self.skip is None else self.skip(x)))

    class ASPP(nn.Module):
        def __init__(self, cin, cout=64, rates=(12, 24, 36)):
            super().__init__()
            self.branches = nn.ModuleList([conv_bn(cin, cout, 1)] + [conv_bn(cin, cout, 3, d=r) for r in rates])
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn(cin, cout, 1))
            self.project = nn.Sequential(conv_bn(cout * (len(rates) + 2), cout, 1), nn.Dropout(0.5))

        def forward(self, x):
            pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
            return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))

    class DeepLabV3(nn.Module):
        """Dilated ResNet-style backbone (output stride 8), ASPP, 3x3 conv, 1x1 classifier."""

        def __init__(self, classes=13):
            super().__init__()
            self.backbone = nn.Sequential(
                conv_bn(3, 16, 3, 2), nn.MaxPool2d(3, 2, 1),
                Bottleneck(16, 8, 32), Bottleneck(32, 16, 64, s=2),
                Bottleneck(64, 16, 64, d=2), Bottleneck(64, 32, 128, d=4),  # layer3/4 dilated, not strided
            )
            self.head = nn.Sequential(ASPP(128), conv_bn(64, 64, 3), nn.Conv2d(64, classes, 1))

        def forward(self, x):
            return F.interpolate(self.head(self.backbone(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)

    class UNet(nn.Module):
        def __init__(self, classes=13, w=8):
            super().__init__()

            def block(cin, cout):
                return nn.Sequential(conv_bn(cin, cout), conv_bn(cout, cout))

            self.d1, self.d2, self.d3 = block(3, w), block(w, 2 * w), block(2 * w, 4 * w)
            self.bottom = block(4 * w, 8 * w)
            self.u3, self.c3 = nn.ConvTranspose2d(8 * w, 4 * w, 2, 2), block(8 * w, 4 * w)
            self.u2, self.c2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2), block(4 * w, 2 * w)
            self.u1, self.c1 = nn.ConvTranspose2d(2 * w, w, 2, 2), block(2 * w, w)
            self.out = nn.Conv2d(w, classes, 1)

        def forward(self, x):
            a = self.d1(x)
            b = self.d2(F.max_pool2d(a, 2))
            c = self.d3(F.max_pool2d(b, 2))
            y = self.bottom(F.max_pool2d(c, 2))
            y = self.c3(torch.cat([self.u3(y), c], 1))
            y = self.c2(torch.cat([self.u2(y), b], 1))
            y = self.c1(torch.cat([self.u1(y), a], 1))
            return self.out(y)

    return {"lraspp_mobilenetv3": LRASPPMobileNetV3, "deeplabv3": DeepLabV3, "unet": UNet}


def export_torch(arch: str, classes: int = 13, size: Tuple[int, int] = SIZE, seed: int = 0) -> bytes:
    """The architecture with random weights (BN statistics randomised too), exported to ONNX."""
    import torch

    torch.manual_seed(seed)
    net = _torch_nets()[arch](classes)
    with torch.no_grad():  # random BN affine and statistics, so eval mode is not the identity
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
            elif isinstance(m, torch.nn.Conv2d) and m.out_channels == classes:
                m.weight.mul_(10.0)  # classifier: spread the logits, so a random map shows several classes
                if m.bias is not None:
                    m.bias.zero_()
    net.eval()
    buf = io.BytesIO()
    dummy = torch.zeros(1, 3, *size)
    torch.onnx.export(net, (dummy,), buf, input_names=["input"], output_names=["logits"], opset_version=17,
                      do_constant_folding=True, dynamo=False)
    return buf.getvalue()


# --- hand-built graphs ----------------------------------------------------------------------


def _model(nodes, inputs, outputs, inits=(), opset=17, domains=()):
    from onnx import helper

    graph = helper.make_graph(nodes, "byo", inputs, outputs, list(inits))
    ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=ops, producer_name="veriseg-tests")
    model.ir_version = 8
    return model


def _weights(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def nhwc_softmax(classes: int = 13, size=SIZE) -> bytes:
    """float32 NHWC input in 0..1 (x/255), per-pixel 1x1 'conv' as MatMul, Softmax on the last axis."""
    from onnx import TensorProto, helper, numpy_helper

    h, w = size
    nodes = [helper.make_node("MatMul", ["image", "W"], ["z"]), helper.make_node("Add", ["z", "b"], ["l"]),
             helper.make_node("Softmax", ["l"], ["probs"], axis=-1)]
    inits = [numpy_helper.from_array(_weights((3, classes)), "W"), numpy_helper.from_array(_weights((classes,), 2), "b")]
    return _model(nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, h, w, 3])],
                  [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, h, w, classes])], inits).SerializeToString()


def _conv_head(classes, dtype=None):
    """1x1 conv weights for an NCHW per-pixel head."""
    from onnx import numpy_helper

    w, b = _weights((classes, 3, 1, 1)), _weights((classes,), 2)
    if dtype is not None:
        w, b = w.astype(dtype), b.astype(dtype)
    return [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]


def dynamic_size(classes: int = 13) -> bytes:
    """float32 NCHW with symbolic batch, height and width; logits at the input's resolution."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["logits"])]
    return _model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes, "height", "width"])],
                  _conv_head(classes)).SerializeToString()


def int64_class_map(classes: int = 13, size=SIZE) -> bytes:
    """float32 NCHW in, argmax inside the graph: int64 [1, H, W] class ids out."""
    from onnx import TensorProto, helper

    h, w = size
    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["l"]),
             helper.make_node("ArgMax", ["l"], ["classes"], axis=1, keepdims=0)]
    return _model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w])],
                  [helper.make_tensor_value_info("classes", TensorProto.INT64, [1, h, w])], _conv_head(classes)).SerializeToString()


def fp16(classes: int = 13, size=SIZE) -> bytes:
    """float16 NCHW in, float16 logits out (a half-precision export)."""
    from onnx import TensorProto, helper

    h, w = size
    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["logits"])]
    return _model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT16, [1, 3, h, w])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, [1, classes, h, w])],
                  _conv_head(classes, np.float16)).SerializeToString()


def classifier(classes: int = 1000, size=(32, 32)) -> bytes:
    """An image classifier: [1, 3, H, W] -> [1, 1000]. Not a per-pixel map: refused."""
    from onnx import TensorProto, helper

    h, w = size
    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["l"]), helper.make_node("GlobalAveragePool", ["l"], ["p"]),
             helper.make_node("Flatten", ["p"], ["logits"])]
    return _model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], _conv_head(classes)).SerializeToString()


def external_data(folder: Path, classes: int = 13, size=SIZE) -> bytes:
    """dynamic_size's graph with its weights moved to an external file next to it: refused."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    model = onnx.load_from_string(int64_class_map(classes, size))
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(folder / "model.onnx"))
    return (folder / "model.onnx").read_bytes()


def custom_domain(classes: int = 13, size=SIZE) -> bytes:
    """A node in a custom-op domain (what a custom kernel library would implement): refused."""
    from onnx import TensorProto, helper

    h, w = size
    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["l"]),
             helper.make_node("FastArgMax", ["l"], ["classes"], domain="com.example.ops")]
    return _model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w])],
                  [helper.make_tensor_value_info("classes", TensorProto.INT64, [1, h, w])], _conv_head(classes),
                  domains=["com.example.ops"]).SerializeToString()


def two_inputs(size=SIZE) -> bytes:
    """An image plus a second tensor input: refused (the flow feeds one image)."""
    from onnx import TensorProto, helper

    h, w = size
    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["l"]), helper.make_node("Add", ["l", "bias"], ["logits"])]
    return _model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w]),
                          helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1, 13, 1, 1])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 13, h, w])], _conv_head(13)).SerializeToString()


def frames(n: int = 3, size=(120, 160), seed: int = 7) -> List[np.ndarray]:
    """BGR uint8 frames of another size than the models' inputs (so resizing is exercised)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        # smooth content plus noise: argmax ties are rare, and a swapped axis changes the result
        yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
        base = np.stack([(xx * (3 + i)) % 256, (yy * 2 + 40 * i) % 256, (xx + yy) % 256], -1)
        out.append(np.clip(base + rng.integers(-30, 30, base.shape), 0, 255).astype(np.uint8))
    return out
