"""The bundled digits CNN: each layer's operator norm against its reshaped kernel's (run by the docs build).

The reshaped norm is what ``spectral_norm`` wrappers converge to: the largest
singular value of the weight viewed as a ``(c_out, c_in * k * k)`` matrix.
The operator norm is the layer's, as it pads (with zeros), on its feature map.
"""

import json
from importlib import resources

import matplotlib.pyplot as plt
import numpy as np

import convsv

with resources.as_file(resources.files("convsv") / "data" / "digits_cnn.npz") as path:
    archive = np.load(path)
    layers = json.loads(str(archive["__convsv__"]))["layers"]
    weights = {layer["name"]: archive[layer["name"]].astype(np.float64) for layer in layers}


def options(layer):
    """The layer's convsv keyword arguments, as stored in the archive's header."""
    keys = ("layout", "stride", "dilation", "groups", "padding", "transposed", "output_padding")
    return {key: layer[key] for key in keys}


names = [layer["name"] for layer in layers]
reshaped = [np.linalg.norm(weights[name].reshape(len(weights[name]), -1), 2) for name in names]
exact, spectra = [], []
for layer in layers:
    kernel, input_shape = weights[layer["name"]], layer["input_shape"]
    exact.append(float(convsv.operator_norm(kernel, input_shape, **options(layer))))
    # Every singular value: zero padding needs a dense SVD, and these layers are small enough for one.
    spectra.append(np.asarray(convsv.singular_values(kernel, input_shape, **options(layer))))

fig, (ax_norms, ax_spectra) = plt.subplots(1, 2, figsize=(9, 3.8), layout="constrained")
x = np.arange(len(names))
ax_norms.bar(x - 0.2, reshaped, 0.4, label="reshaped kernel (what spectral_norm finds)")
ax_norms.bar(x + 0.2, exact, 0.4, label="the layer's operator norm (convsv)")
for position, (low, high) in enumerate(zip(reshaped, exact, strict=True)):
    ax_norms.annotate(f"x{high / low:.2f}", (position + 0.2, high), ha="center", va="bottom", fontsize=8)
ax_norms.set_xticks(x, [f"{n}\n{'x'.join(map(str, weights[n].shape))}" for n in names], fontsize=8)
ax_norms.set_ylim(0, 1.45 * max(exact))
ax_norms.set(ylabel="largest singular value", title="two different numbers")
ax_norms.legend(fontsize=8, loc="upper left")

# Divided by the reshaped norm, as spectral_norm divides the weight: anything above 1 expands.
for name, values, scale in zip(names, spectra, reshaped, strict=True):
    above = int(np.sum(values > scale * (1 + 1e-9)))
    ax_spectra.semilogy(
        np.linspace(0, 1, values.size), values / scale, lw=1.5, label=f"{name}: {above} of {values.size} > 1"
    )
ax_spectra.axhline(1.0, color="black", lw=0.8, ls="--")
ax_spectra.set(
    xlabel="rank / number of singular values",
    ylabel="singular value / reshaped norm",
    title="after spectral_norm's 'normalise to 1'",
)
ax_spectra.legend(fontsize=8)
fig.suptitle("convsv's bundled CNN trained on scikit-learn's digits (each layer as trained: zero padding)")
