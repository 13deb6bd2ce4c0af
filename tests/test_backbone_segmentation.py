"""End to end: a tiny segmentation head on the output-stride-8 backbone of a small spec learns to
segment synthetic shapes, in both backends (docs/backbone.md).

Images are rectangles and discs of random size, place and colour drawn on Gaussian noise; the label
is shape (1) or background (0) per pixel. The backbone (TinyNet-E, levels P2 and P4 at output stride
8, so P4 comes from dilated stages) and a two-level head (1x1 convs, P4 upsampled onto P2, a 3x3
classifier, bilinear upsampling to the input) train from scratch with Adam for a few hundred images;
the mean IoU over the two classes is measured on held-out images drawn with another seed.
"""

from __future__ import annotations

import numpy as np
import pytest

from effspec.emit.pipeline import build
from effspec.weights.generated import load_model_module

SPEC = "specs/tinynet-e.yaml"
SIZE = 40  # input height and width (a multiple of 8)
STEPS, BATCH, LR = 80, 8, 1e-2
MIN_IOU = 0.75  # mean IoU (background, shape) on the held-out images; measured: see docs/backbone.md
LEVELS = (1, 3)  # P2 (stride 4) and P4 (stride 8 at output stride 8: its stages dilate)


def shapes(seed: int, count: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(NCHW float32 images, N x H x W int64 masks): one or two shapes per image on noise."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 0.5, (count, 3, size, size)).astype(np.float32)
    masks = np.zeros((count, size, size), np.int64)
    yy, xx = np.mgrid[:size, :size]
    for i in range(count):
        for _ in range(rng.integers(1, 3)):
            if rng.integers(2):
                h, w = rng.integers(size // 6, size // 2, 2)
                top, left = rng.integers(0, size - h), rng.integers(0, size - w)
                region = (yy >= top) & (yy < top + h) & (xx >= left) & (xx < left + w)
            else:
                r = rng.integers(size // 10, size // 4)
                cy, cx = rng.integers(r, size - r, 2)
                region = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            images[i][:, region] += rng.uniform(-1.5, 1.5, (3, 1)).astype(np.float32)
            masks[i][region] = 1
    return images, masks


def mean_iou(predicted: np.ndarray, target: np.ndarray, classes: int = 2) -> float:
    ious = [((predicted == c) & (target == c)).sum() / ((predicted == c) | (target == c)).sum() for c in range(classes)]
    return float(np.mean(ious))


TRAIN = shapes(0, 256)
HELD_OUT = shapes(1, 64)
ORDER = np.random.default_rng(2).integers(0, len(TRAIN[0]), (STEPS, BATCH))  # the same batches in both


@pytest.mark.slow
def test_torch_backbone_learns_to_segment_shapes() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    module = load_model_module(build(SPEC).model, "torch")
    torch.manual_seed(0)

    class Segmenter(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = module.build_model(features_only=True, out_indices=LEVELS, output_stride=8)
            fine, coarse = (level.channels for level in self.backbone.feature_info)
            self.lateral = torch.nn.Conv2d(fine, 32, 1)
            self.top = torch.nn.Conv2d(coarse, 32, 1)
            self.classify = torch.nn.Conv2d(32, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p2, p4 = self.backbone(x)
            y = self.lateral(p2) + F.interpolate(self.top(p4), size=p2.shape[-2:], mode="bilinear")
            return F.interpolate(self.classify(F.relu(y)), size=x.shape[-2:], mode="bilinear")

    net = Segmenter()
    assert [level.reduction for level in net.backbone.feature_info] == [4, 8]
    optimizer = torch.optim.Adam(net.parameters(), LR)
    images, masks = torch.from_numpy(TRAIN[0]), torch.from_numpy(TRAIN[1])
    for batch in ORDER:
        loss = F.cross_entropy(net(images[batch]), masks[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = net.eval()(torch.from_numpy(HELD_OUT[0])).argmax(1).numpy()
    iou = mean_iou(predicted, HELD_OUT[1])
    print(f"torch: held-out mean IoU {iou:.3f}")
    assert iou >= MIN_IOU


@pytest.mark.slow
def test_keras_backbone_learns_to_segment_shapes() -> None:
    keras = pytest.importorskip("keras")
    layers = keras.layers
    module = load_model_module(build(SPEC).model, "keras")
    keras.utils.set_random_seed(0)
    backbone = module.build_model(features_only=True, out_indices=LEVELS, output_stride=8)
    assert [level.reduction for level in backbone.feature_info] == [4, 8]
    assert backbone.output_names == ["P2", "P4"]
    p2, p4 = backbone.outputs
    y = layers.Add()(
        [layers.Conv2D(32, 1)(p2), layers.UpSampling2D(2, interpolation="bilinear")(layers.Conv2D(32, 1)(p4))]
    )
    y = layers.Conv2D(2, 3, padding="same")(layers.ReLU()(y))
    net = keras.Model(backbone.input, layers.UpSampling2D(4, interpolation="bilinear")(y))
    net.compile(
        optimizer=keras.optimizers.Adam(LR),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    images = np.transpose(TRAIN[0], (0, 2, 3, 1))
    order = ORDER.ravel()  # the torch test's batches, in its order: one epoch, unshuffled
    net.fit(images[order], TRAIN[1][order], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    logits = net.predict(np.transpose(HELD_OUT[0], (0, 2, 3, 1)), verbose=0)
    iou = mean_iou(logits.argmax(-1), HELD_OUT[1])
    print(f"keras: held-out mean IoU {iou:.3f}")
    assert iou >= MIN_IOU
