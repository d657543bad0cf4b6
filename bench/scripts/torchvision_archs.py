"""Exports torchvision architectures to ONNX for `cargo xtask bench archs`: a robustness sweep over model
families and exporters, not an accuracy benchmark. Weights are torchvision's seeded random initialisation
(no weights can be downloaded here); BatchNorm statistics are then re-estimated on real photo crops, so that
activations have the ranges of a network that sees images rather than those of an untouched initialisation.

Usage: python torchvision_archs.py --raw crops.f32 --out DIR
(--raw: float32 NCHW 3x224x224 samples, as `bench bench-child --dump-raw` writes them)
"""

import argparse
import os

import numpy as np
import torch
import torchvision
from torchvision.models.vision_transformer import VisionTransformer

# name -> builder; small members of each family, so that the sweep fits a 2-core machine.
ARCHS = {
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(),
    "regnet_y_400mf": lambda: torchvision.models.regnet_y_400mf(),
    "shufflenet_v2_x1_0": lambda: torchvision.models.shufflenet_v2_x1_0(),
    "squeezenet1_1": lambda: torchvision.models.squeezenet1_1(),
    "densenet121": lambda: torchvision.models.densenet121(),
    "googlenet": lambda: torchvision.models.googlenet(aux_logits=False, init_weights=True),
    "resnext50_32x4d": lambda: torchvision.models.resnext50_32x4d(),
    "convnext_tiny": lambda: torchvision.models.convnext_tiny(),
    "swin_t": lambda: torchvision.models.swin_t(),
    "maxvit_t": lambda: torchvision.models.maxvit_t(),
    # Dense prediction: dilated convolutions, an ASPP or LR-ASPP head, a bilinear Resize to the input size.
    "lraspp_mobilenet_v3": lambda: torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None
    ),
    "deeplabv3_mobilenet_v3": lambda: torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, aux_loss=False
    ),
    # A detector whose export keeps its post-processing (an If node, NMS, TopK): outputs boxes, scores, labels.
    "ssdlite320_mobilenet_v3": lambda: torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None
    ),
    # A 4-block ViT-S/16: torchvision's ViT-B/16 is 330 MB.
    "vit_s16_4blocks": lambda: VisionTransformer(
        image_size=224, patch_size=16, num_layers=4, num_heads=6, hidden_dim=384, mlp_dim=1536
    ),
}

# (exporter, opset): the TorchScript exporter at opset 17 for every architecture, the dynamo exporter at its
# default opset 18 for a subset, and opset 23 (ONNX's own Attention op) for the ViT.
EXPORTS = [("torchscript", 17, name) for name in ARCHS] + [
    ("dynamo", 18, name)
    for name in ["mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x1_0", "densenet121", "convnext_tiny",
                 "swin_t", "vit_s16_4blocks"]
] + [("dynamo", 23, "vit_s16_4blocks")]


class FirstOutputs(torch.nn.Module):
    """A segmentation model's `out` map, or a detector's boxes, scores and labels for its one image."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        if isinstance(out, dict):
            return out["out"]
        return out[0]["boxes"], out[0]["scores"], out[0]["labels"]


def build(name, images):
    torch.manual_seed(0)
    model = ARCHS[name]()
    if hasattr(model, "heads"):
        # torchvision zero-initialises the ViT's classifier: its logits would be 0 for every image.
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch
    # A detector in training mode wants targets: its BatchNorms keep their initial statistics.
    if norms and not name.startswith("ssdlite"):
        model.train()
        with torch.no_grad():
            for i in range(0, len(images), 8):
                model(images[i : i + 8])
    model.eval()
    return FirstOutputs(model).eval() if name.startswith(("lraspp", "deeplab", "ssdlite")) else model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--raw", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    images = torch.from_numpy(np.fromfile(args.raw, dtype=np.float32).reshape(-1, 3, 224, 224)[:32].copy())
    for exporter, opset, name in EXPORTS:
        path = os.path.join(args.out, f"{name}-{exporter}-opset{opset}.onnx")
        if os.path.exists(path):
            continue
        model = build(name, images)
        sample = images[:1]
        tmp = path + ".tmp.onnx"
        if exporter == "torchscript" and name.startswith("ssdlite"):
            # One image per run: the post-processing is per image.
            torch.onnx.export(model, sample, tmp, opset_version=opset, input_names=["input"], dynamo=False)
        elif exporter == "torchscript":
            torch.onnx.export(model, sample, tmp, opset_version=opset, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              dynamo=False)
        else:
            # Two samples: the dynamo exporter specialises a dimension of size 1.
            batch = torch.export.Dim("batch", max=1024)
            torch.onnx.export(model, (images[:2],), tmp, opset_version=opset, input_names=["input"],
                              output_names=["logits"], dynamic_shapes=({0: batch},), dynamo=True,
                              external_data=False)
        os.replace(tmp, path)
        print("exported", path, flush=True)


if __name__ == "__main__":
    main()
