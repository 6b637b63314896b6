"""Plain-PyTorch model definitions for scripts/bench_pytorch.py (no torchvision, no Keras).

* `resnet50()`: torchvision's ResNet-50 (v1.5: the stride of a downsampling Bottleneck is
  on its 3x3 conv) rebuilt module for module: the same module names, parameter shapes and
  state_dict keys as `torchvision.models.resnet50(weights=None)`, and the same
  initialisation in the same order (every module is constructed in torchvision's order,
  so the default inits draw the same random numbers; then every Conv2d gets
  kaiming_normal_(mode="fan_out", nonlinearity="relu"), every BatchNorm2d weight 1,
  bias 0). With the same torch.manual_seed the weights are bit-identical to torchvision's
  (checked by `python scripts/torch_models.py` when torchvision is installed).
  Used when torchvision is missing (e.g. a GPU machine with a bare PyTorch).

* `xception()`: the chest X-ray Xception of scripts/pneumonia-xception-architecture.md
  (keras.applications.Xception backbone, include_top=False, input 150x150, + GAP +
  Dense(128, relu) + Dropout(0.3) + Dense(2, linear)), the same graph as the XceptionPort
  of scripts/make_pneumonia_fixtures.py (which cannot be imported without Keras) but as an
  nn.Module whose state_dict keys are the tensor names of the converted safetensors file
  (scripts/convert_pneumonia_xception.py; plus BatchNorm's num_batches_tracked). Each of
  its 36 ReLUs is its own nn.ReLU module, so they can be swapped for guided ones. TF-SAME
  padding: the 3x3 stride-1 separable convs pad 1/1 (padding=1), the 1x1 stride-2
  shortcut convs need none, the 3x3/2 max pools pad with -inf by pad_same (0/1, or 1/1
  for 9 -> 5). Weights: Keras' default initialisers (glorot uniform kernels, zero biases,
  BatchNorm gamma 1, beta 0, moving mean 0, moving variance 1), drawn from torch's
  global generator (seed it first).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ------------------------------------------------------------------ ResNet-50
def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, groups=1, bias=False, dilation=1)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        width = planes
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)  # v1.5: stride on the 3x3
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * Bottleneck.expansion, stride),
                                       nn.BatchNorm2d(planes * Bottleneck.expansion))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes)


# ------------------------------------------------------------------ Xception (150x150, 2 classes)
BN_EPS = 1e-3  # Keras BatchNormalization(epsilon=0.001)


def tf_same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    (t, b), (l, r) = tf_same_pads(x.shape[-2], k, s), tf_same_pads(x.shape[-1], k, s)
    if t == b == l == r == 0:
        return x
    return F.pad(x, (l, r, t, b), value=value)


class SeparableConv2d(nn.Module):
    """Keras SeparableConv2D(3x3, stride 1, 'same', depth_multiplier 1, no bias):
    depthwise 3x3 (groups = cin) then pointwise 1x1, nothing in between."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise_weight = nn.Parameter(torch.empty(cin, 1, 3, 3))
        self.pointwise_weight = nn.Parameter(torch.empty(cout, cin, 1, 1))
        # glorot uniform: torch's fan_in + fan_out equals Keras' for both layouts
        nn.init.xavier_uniform_(self.depthwise_weight)
        nn.init.xavier_uniform_(self.pointwise_weight)

    def forward(self, x):
        # TF SAME for a 3x3 stride-1 kernel is always 1/1: symmetric padding=1 is exact
        x = F.conv2d(x, self.depthwise_weight, padding=1, groups=self.depthwise_weight.shape[0])
        return F.conv2d(x, self.pointwise_weight)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS)  # weight 1, bias 0, running mean 0, var 1


def _conv(cin: int, cout: int, k: int, s: int) -> nn.Conv2d:
    c = nn.Conv2d(cin, cout, k, stride=s, bias=False)  # 'valid' (3x3) or 1x1 'same' (= no pad)
    nn.init.xavier_uniform_(c.weight)
    return c


class Xception150(nn.Module):
    """keras.applications.Xception(include_top=False, input 150x150) + GAP + Dense(128, relu)
    + Dropout(0.3) + Dense(2). Module names = Keras layer names."""

    DOWN = ((3, "conv2d_1", "batch_normalization_1", 128, 256, 256),
            (4, "conv2d_2", "batch_normalization_2", 256, 728, 728),
            (13, "conv2d_3", "batch_normalization_3", 728, 728, 1024))

    def __init__(self, num_classes: int = 2):
        super().__init__()
        L = {}  # name -> module, in Keras execution order
        relus = {}

        def act(name):
            relus[name] = nn.ReLU()

        L["block1_conv1"], L["block1_conv1_bn"] = _conv(3, 32, 3, 2), _bn(32)
        act("block1_conv1_act")
        L["block1_conv2"], L["block1_conv2_bn"] = _conv(32, 64, 3, 1), _bn(64)
        act("block1_conv2_act")
        L["block2_sepconv1"], L["block2_sepconv1_bn"] = SeparableConv2d(64, 128), _bn(128)
        act("block2_sepconv2_act")
        L["block2_sepconv2"], L["block2_sepconv2_bn"] = SeparableConv2d(128, 128), _bn(128)
        L["conv2d"], L["batch_normalization"] = _conv(64, 128, 1, 2), _bn(128)
        for b, rc, rb, cin, f1, f2 in self.DOWN:
            if b == 13:
                self._middle(L, act)
            act(f"block{b}_sepconv1_act")
            L[f"block{b}_sepconv1"], L[f"block{b}_sepconv1_bn"] = SeparableConv2d(cin, f1), _bn(f1)
            act(f"block{b}_sepconv2_act")
            L[f"block{b}_sepconv2"], L[f"block{b}_sepconv2_bn"] = SeparableConv2d(f1, f2), _bn(f2)
            L[rc], L[rb] = _conv(cin, f2, 1, 2), _bn(f2)
        L["block14_sepconv1"], L["block14_sepconv1_bn"] = SeparableConv2d(1024, 1536), _bn(1536)
        act("block14_sepconv1_act")
        L["block14_sepconv2"], L["block14_sepconv2_bn"] = SeparableConv2d(1536, 2048), _bn(2048)
        act("block14_sepconv2_act")
        L["dense"] = nn.Linear(2048, 128)
        act("dense_act")
        L["dense_1"] = nn.Linear(128, num_classes)
        for name in ("dense", "dense_1"):
            nn.init.xavier_uniform_(L[name].weight)
            nn.init.zeros_(L[name].bias)
        self.layers = nn.ModuleDict(L)
        self.acts = nn.ModuleDict(relus)
        assert len(relus) == 36, len(relus)

    @staticmethod
    def _middle(L, act):
        for b in range(5, 13):
            for i in (1, 2, 3):
                act(f"block{b}_sepconv{i}_act")
                L[f"block{b}_sepconv{i}"], L[f"block{b}_sepconv{i}_bn"] = SeparableConv2d(728, 728), _bn(728)

    def state_dict_keras(self) -> dict[str, torch.Tensor]:
        """Tensors under the converted file's names ("block1_conv1.weight", ...)."""
        return {k.split(".", 1)[1]: v for k, v in self.state_dict().items()
                if k.startswith("layers.") and not k.endswith("num_batches_tracked")}

    def _cb(self, x, conv, bn):
        return self.layers[bn](self.layers[conv](x))

    @staticmethod
    def _pool(x):  # MaxPooling2D(3, 2, 'same'): the -inf pads never win the max
        return F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, 2)

    def _down(self, x, b, rc, rb):
        r = self._cb(x, rc, rb)  # shortcut from the PRE-ReLU input
        y = self._cb(self.acts[f"block{b}_sepconv1_act"](x), f"block{b}_sepconv1", f"block{b}_sepconv1_bn")
        y = self._cb(self.acts[f"block{b}_sepconv2_act"](y), f"block{b}_sepconv2", f"block{b}_sepconv2_bn")
        return self._pool(y) + r

    def pooled(self, x):
        a = self.acts
        x = a["block1_conv1_act"](self._cb(x, "block1_conv1", "block1_conv1_bn"))
        x = a["block1_conv2_act"](self._cb(x, "block1_conv2", "block1_conv2_bn"))
        r = self._cb(x, "conv2d", "batch_normalization")
        y = self._cb(x, "block2_sepconv1", "block2_sepconv1_bn")  # no ReLU before block2_sepconv1
        y = self._cb(a["block2_sepconv2_act"](y), "block2_sepconv2", "block2_sepconv2_bn")
        x = self._pool(y) + r
        for b, rc, rb, *_ in self.DOWN[:2]:
            x = self._down(x, b, rc, rb)
        for b in range(5, 13):
            y = x
            for i in (1, 2, 3):
                y = self._cb(a[f"block{b}_sepconv{i}_act"](y), f"block{b}_sepconv{i}", f"block{b}_sepconv{i}_bn")
            x = y + x
        b, rc, rb, *_ = self.DOWN[2]
        x = self._down(x, b, rc, rb)
        x = a["block14_sepconv1_act"](self._cb(x, "block14_sepconv1", "block14_sepconv1_bn"))  # ReLU after BN
        x = a["block14_sepconv2_act"](self._cb(x, "block14_sepconv2", "block14_sepconv2_bn"))
        return x.mean(dim=(2, 3))

    def forward(self, x):
        h = self.acts["dense_act"](self.layers["dense"](self.pooled(x)))
        return self.layers["dense_1"](h)  # Dropout(0.3): identity at inference


def xception(num_classes: int = 2) -> Xception150:
    return Xception150(num_classes)


# ------------------------------------------------------------------ self-check
def _check() -> None:
    """ResNet-50 vs torchvision (same seed -> same weights and logits); Xception vs the
    XceptionPort of make_pneumonia_fixtures (needs keras with KERAS_BACKEND=torch)."""
    import os
    import sys
    from pathlib import Path

    torch.set_num_threads(2)
    x = torch.rand((2, 3, 224, 224), generator=torch.Generator().manual_seed(0)) * 2 - 1
    try:
        import torchvision
    except ImportError:
        print("torchvision not installed: ResNet-50 comparison skipped")
    else:
        torch.manual_seed(0)
        ref = torchvision.models.resnet50(weights=None).eval()
        torch.manual_seed(0)
        ours = resnet50().eval()
        a, b = ref.state_dict(), ours.state_dict()
        assert list(a) == list(b), "state_dict keys differ"
        assert all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a), "weights differ"
        assert [type(m).__name__ for m in ref.modules()][1:] == [type(m).__name__ for m in ours.modules()][1:]
        with torch.no_grad():
            d = (ref(x) - ours(x)).abs().max().item()
        assert d == 0.0, d
        print(f"resnet50: {len(a)} state_dict tensors, "
              f"{sum(p.numel() for p in ours.parameters())} parameters, identical to torchvision; logits diff {d}")

    torch.manual_seed(0)
    m = xception().eval()
    n = sum(p.numel() for p in m.parameters())
    stats = sum(v.numel() for k, v in m.named_buffers() if "running" in k)
    assert n + stats == 21124010, (n, stats)  # the .keras file's count (BN moving stats: buffers here)
    sd = m.state_dict_keras()
    x150 = torch.rand((2, 3, 150, 150), generator=torch.Generator().manual_seed(0)) * 2 - 1
    os.environ.setdefault("KERAS_BACKEND", "torch")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import make_pneumonia_fixtures as mpf
    except Exception as e:  # noqa: BLE001  (keras missing or broken)
        print(f"xception: {n} parameters + buffers; XceptionPort comparison skipped ({type(e).__name__}: {e})")
        return
    port = mpf.XceptionPort(sd)
    with torch.no_grad():
        d = (port(x150) - m(x150)).abs().max().item()
    assert d < 1e-4, d
    print(f"xception: {len(sd)} tensors, {n} parameters + BN stats; logits vs make_pneumonia_fixtures.XceptionPort: "
          f"max |diff| {d:.3g}")


if __name__ == "__main__":
    _check()
