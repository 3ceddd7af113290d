"""The bundled digits CNN (``convsv/data/digits_cnn.npz``): its format, and that it is really trained.

The file is written by ``experiments/train_digits_cnn.py``. The accuracy check runs the network
again in plain NumPy, independently of PyTorch, on the same test split of scikit-learn's digits.
"""

from __future__ import annotations

import json
from importlib.resources import as_file, files

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

pytestmark = pytest.mark.backend("numpy")

META_KEY = "__convsv__"
LAYER_KEYS = {
    "name",
    "layout",
    "stride",
    "dilation",
    "groups",
    "padding",
    "transposed",
    "output_padding",
    "input_shape",
}


@pytest.fixture(scope="module")
def bundled():
    """(arrays, metadata, file size in bytes) of the bundled model."""
    with as_file(files("convsv") / "data" / "digits_cnn.npz") as path:
        size = path.stat().st_size
        # The context manager closes the zip file (an open one would raise a ResourceWarning).
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    meta = json.loads(str(arrays.pop(META_KEY)))
    return arrays, meta, size


def conv2d(x, w, b, *, stride, padding, dilation, groups):
    """Zero-padded, strided, dilated, grouped cross-correlation, as torch's Conv2d; NCHW, OIHW."""
    (top, bottom), (left, right) = padding
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_ch, in_per_group, kh, kw = w.shape
    dh, dw = dilation
    # Every (dilated) kernel-sized window of the padded input: N, C, H', W', window_h, window_w.
    windows = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    windows = windows[:, :, :: stride[0], :: stride[1], ::dh, ::dw]
    n, c, ho, wo = windows.shape[:4]
    assert c == in_per_group * groups
    windows = windows.reshape(n, groups, in_per_group, ho, wo, kh, kw)
    w = w.reshape(groups, out_ch // groups, in_per_group, kh, kw)
    y = np.einsum("ngchwij,gocij->ngohw", windows, w).reshape(n, out_ch, ho, wo)
    return y + b[None, :, None, None]


def test_file_and_metadata(bundled):
    arrays, meta, size = bundled
    assert size < 1_000_000
    assert meta["format"] == "convsv-layers"
    assert meta["version"] == 1
    assert isinstance(meta["description"], str)
    assert meta["input_shape"] == [1, 8, 8]
    assert 0 <= meta["test_accuracy"] <= 1
    assert [layer["name"] for layer in meta["layers"]] == ["conv1", "conv2", "conv3", "conv4"]

    channels, spatial = meta["input_shape"][0], meta["input_shape"][1:]
    for layer in meta["layers"]:
        assert set(layer) == LAYER_KEYS
        assert layer["layout"] == "OIHW"
        assert not layer["transposed"]
        kernel = arrays[layer["name"]]
        assert kernel.dtype == np.float32
        assert kernel.ndim == 4
        out_ch, in_per_group, kh, kw = kernel.shape
        groups = layer["groups"]
        assert out_ch % groups == 0
        # The kernel's input channels and the metadata's input size follow from the layer before.
        assert in_per_group * groups == channels
        assert layer["input_shape"] == spatial
        assert arrays[f"{layer['name']}.bias"].shape == (out_ch,)
        spatial = [
            (size + lo + hi - dil * (k - 1) - 1) // s + 1
            for size, (lo, hi), dil, k, s in zip(
                spatial, layer["padding"], layer["dilation"], (kh, kw), layer["stride"], strict=True
            )
        ]
        channels = out_ch
    assert arrays["head.weight"].shape == (10, channels)
    assert arrays["head.bias"].shape == (10,)


def test_weights_are_trained(bundled):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    arrays, meta, _ = bundled
    digits = load_digits()
    x = (digits.images / 16.0)[:, None, :, :]
    # The same split as the training script.
    _, x_test, _, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )

    h = x_test
    for layer in meta["layers"]:
        name = layer["name"]
        h = conv2d(
            h,
            arrays[name].astype(np.float64),
            arrays[f"{name}.bias"].astype(np.float64),
            stride=layer["stride"],
            padding=layer["padding"],
            dilation=layer["dilation"],
            groups=layer["groups"],
        )
        h = np.maximum(h, 0.0)
    logits = h.mean(axis=(2, 3)) @ arrays["head.weight"].T.astype(np.float64) + arrays["head.bias"]
    acc = float(np.mean(logits.argmax(axis=1) == y_test))

    assert acc >= 0.9
    assert acc == pytest.approx(meta["test_accuracy"], abs=0.02)
