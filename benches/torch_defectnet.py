"""The defect network of models/src/model.rs rebuilt in PyTorch with random weights,
timed on the CPU at the same input size and batch sizes, as the peer of `cargo bench
--bench inference`. Prints one JSON line per batch size: median frames per second.

usage: python benches/torch_defectnet.py [--threads 2] [--width 640] [--height 360]
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn


class DefectNet(nn.Module):
    """Same layers, strides, paddings and dilations as DefectNetConfig's defaults with
    the box head: class scores and boxes per 8x8 cell."""

    def __init__(self, stem=16, mid=24, cell=40, dilation=2, wide=4, classes=7, box_hidden=24, box_outputs=4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, stem, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(stem, mid, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(mid, cell, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(cell, cell, 3, stride=1, padding=1), nn.ReLU(),
            nn.Conv2d(cell, cell, 3, stride=1, padding=dilation, dilation=dilation), nn.ReLU(),
            nn.Conv2d(cell, cell, 3, stride=1, padding=wide, dilation=wide), nn.ReLU(),
        )
        self.head = nn.Conv2d(cell, classes, 1)
        self.boxes = nn.Sequential(
            nn.Conv2d(cell, box_hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(box_hidden, box_outputs, 1),
        )

    def forward(self, pixels):
        x = self.features(pixels / 255.0 - 0.5)
        return torch.softmax(self.head(x), dim=1), self.boxes(x)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = DefectNet().eval()
    for batch in (1, 8):
        pixels = torch.randint(0, 256, (batch, 3, args.height, args.width)).float()
        samples = []
        with torch.inference_mode():
            for _ in range(3):
                net(pixels)
            deadline = time.perf_counter() + args.seconds
            while time.perf_counter() < deadline or len(samples) < 10:
                start = time.perf_counter()
                net(pixels)
                samples.append(time.perf_counter() - start)
        median = statistics.median(samples)
        print(json.dumps({"peer": "pytorch", "version": torch.__version__, "threads": args.threads,
                          "batch": batch, "median_s": median, "frames_per_s": batch / median}))


if __name__ == "__main__":
    main()
