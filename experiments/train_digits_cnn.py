"""Train a small CNN on scikit-learn's ``load_digits`` and save its conv kernels for convsv.

Writes ``src/convsv/data/digits_cnn.npz``: one float32 array per conv layer (PyTorch OIHW
layout, keyed by the layer's name), the conv biases and the linear head (so the weights can be
checked by running the network), and a ``__convsv__`` key holding the JSON metadata as a 0-d
unicode array, readable with ``np.load(path, allow_pickle=False)``.

The layer metadata (stride, padding, dilation, groups, input size) is read off the
``nn.Conv2d`` modules and forward pre-hooks on a dummy input, not typed by hand, so it cannot
drift from the model.

Run from anywhere: ``python experiments/train_digits_cnn.py``. CPU only, one thread, a few
seconds; deterministic (fixed seed, deterministic algorithms).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import convsv.torch as convsv_torch

SEED = 0
EPOCHS = 60
BATCH = 64
LR = 1e-2
OUT = Path(__file__).resolve().parents[1] / "src" / "convsv" / "data" / "digits_cnn.npz"
DESCRIPTION = (
    "Small CNN (4 conv layers: 3x3, strided 3x3, depthwise 3x3, 1x1) trained on scikit-learn's "
    "load_digits by experiments/train_digits_cnn.py"
)


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)  # 8x8 -> 8x8
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)  # 8x8 -> 4x4
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, groups=32)  # depthwise, 4x4
        self.conv4 = nn.Conv2d(32, 64, 1)  # 4x4
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.conv4(x))
        return self.head(x.mean(dim=(2, 3)))  # global average pool


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits as N x 1 x 8 x 8 float32 in [0, 1], split as the test in tests/ also does."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    return train_test_split(x, digits.target, test_size=0.25, random_state=0, stratify=digits.target)


def conv_layer_metadata(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict]:
    """Describe each Conv2d in forward order, with the spatial size of its input feature map."""
    shapes = convsv_torch.input_shapes(model, torch.zeros(1, *input_shape))  # in forward order
    layers = []
    for name, in_hw in shapes.items():
        conv = model.get_submodule(name)
        # Only explicit integer zero padding is described by [[top, bottom], [left, right]].
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            msg = f"{name}: padding {conv.padding!r} / mode {conv.padding_mode!r} not supported"
            raise ValueError(msg)
        ph, pw = conv.padding
        layers.append(
            {
                "name": name,
                "layout": "OIHW",
                "stride": list(conv.stride),
                "dilation": list(conv.dilation),
                "groups": conv.groups,
                "padding": [[ph, ph], [pw, pw]],
                "transposed": bool(conv.transposed),
                "output_padding": list(conv.output_padding),
                "input_shape": list(in_hw),
            }
        )
    return layers


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(dim=1) == y).float().mean().item()
    model.train()
    return acc


def main() -> None:
    torch.set_num_threads(1)  # light on a shared machine, and one less source of nondeterminism
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)

    x_train, x_test, y_train, y_test = load_split()
    x_train, x_test = torch.from_numpy(x_train), torch.from_numpy(x_test)
    y_train, y_test = torch.from_numpy(y_train).long(), torch.from_numpy(y_test).long()

    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    # Cosine decay to zero: at a constant 1e-2 Adam sometimes spikes late in training, and the
    # final accuracy then depends on which epoch we stop at; the decay makes it land smoothly.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    shuffle = torch.Generator().manual_seed(SEED)  # own generator: the batch order is reproducible

    start = time.perf_counter()
    for epoch in range(1, EPOCHS + 1):
        perm = torch.randperm(len(x_train), generator=shuffle)
        total = 0.0
        for i in range(0, len(perm), BATCH):
            idx = perm[i : i + BATCH]
            opt.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if epoch % 5 == 0 or epoch == 1:
            print(
                f"epoch {epoch:3d}  loss {total / len(x_train):.4f}  "
                f"train acc {accuracy(model, x_train, y_train):.4f}  "
                f"test acc {accuracy(model, x_test, y_test):.4f}"
            )
    seconds = time.perf_counter() - start
    test_acc = accuracy(model, x_test, y_test)
    print(f"trained in {seconds:.1f} s; final test accuracy {test_acc:.4f}")

    layers = conv_layer_metadata(model, (1, 8, 8))
    meta = {
        "format": "convsv-layers",
        "version": 1,
        "description": DESCRIPTION,
        "input_shape": [1, 8, 8],
        "test_accuracy": round(test_acc, 6),
        "layers": layers,
    }
    params = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    arrays = {}
    for layer in layers:
        # The kernel under the bare layer name (what the loader reads), the bias beside it.
        arrays[layer["name"]] = params[f"{layer['name']}.weight"]
        arrays[f"{layer['name']}.bias"] = params[f"{layer['name']}.bias"]
    arrays["head.weight"] = params["head.weight"]
    arrays["head.bias"] = params["head.bias"]
    # A 0-d unicode array, not an object array, so np.load needs no pickle.
    arrays["__convsv__"] = np.array(json.dumps(meta))

    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
