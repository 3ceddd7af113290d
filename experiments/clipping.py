"""The pieces the paper's clipping experiments share (Sedghi, Gupta & Long, ICLR 2019, Sections 4.2-4.4).

The paper trains a CIFAR ResNet-32 with and without batch norm and compares three arms:

- ``baseline``: plain SGD with momentum;
- ``convsv``: every 100 steps, project every convolution onto the ball of operator norm
  ``bound`` (the layer's true spectrum, :class:`convsv.torch.OperatorNormClipper`);
- ``reshaped``: every 100 steps, clip the singular values of each kernel reshaped into a
  ``c_out x (c_in k k)`` matrix to ``bound`` (the matrix ``spectral_norm`` looks at).

This module holds the network (:func:`cifar_resnet`), the arms (:class:`Setting`,
:func:`parse_settings`), the reshaped clipping (:func:`clip_reshaped_`), the norms measured
at the end (:func:`operator_norms`, :func:`reshaped_norms`) and one training run
(:func:`train_run`). ``experiments/digits_clipping.py`` and ``experiments/cifar10_clipping.py``
run the comparison on their data; ``benchmarks/models.py`` takes its ResNet-32 from here.
It is a helper module, not a script.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import convsv
import convsv.torch as convsv_torch

METHODS = ("baseline", "convsv", "reshaped")


# --- the network ---------------------------------------------------------------------------------


class Shortcut(nn.Module):
    """He et al.'s option A: keep every ``stride``-th position, pad the new channels with zeros."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (each followed by batch norm, if any) and an option-A shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=not batch_norm)
        self.bn2 = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()
        self.shortcut = Shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


def cifar_resnet(
    depth: int = 32,
    *,
    batch_norm: bool = True,
    width: int = 16,
    in_channels: int = 3,
    num_classes: int = 10,
) -> nn.Module:
    """He et al.'s CIFAR ResNet (2016, Section 4.2) of ``depth = 6 n + 2`` layers, option-A shortcuts.

    A 3x3 stem convolution to ``width`` channels, then three stages of ``n`` basic blocks with
    ``width``, ``2 width`` and ``4 width`` channels (stride 2 at the start of stages 2 and 3),
    global average pooling and a linear head. Every convolution is 3x3 with zero padding 1;
    the shortcuts have no convolution. ``batch_norm=False`` drops every BatchNorm and gives
    the convolutions a bias instead. Depth 32 with batch norm has 31 convolutions and
    464,154 parameters (0.46 M in He et al.'s table).
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        msg = f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth!r}"
        raise ValueError(msg)
    blocks = (depth - 2) // 6
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(width))
    layers.append(nn.ReLU())
    c_in = width
    for c_out, stride in [(width, 1), (2 * width, 2), (4 * width, 2)]:
        for block in range(blocks):
            layers.append(BasicBlock(c_in, c_out, stride if block == 0 else 1, batch_norm))
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


# --- the arms of the comparison ------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One arm: ``method`` is "baseline", "convsv" or "reshaped"; ``bound`` is None for the baseline."""

    method: str
    bound: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            msg = f"method must be one of {', '.join(METHODS)}, got {self.method!r}"
            raise ValueError(msg)
        if (self.method == "baseline") != (self.bound is None):
            msg = "the baseline takes no bound; convsv and reshaped need one"
            raise ValueError(msg)
        if self.bound is not None and not (math.isfinite(self.bound) and self.bound > 0):
            msg = f"the bound must be a positive number, got {self.bound!r}"
            raise ValueError(msg)

    @property
    def label(self) -> str:
        """``"baseline"``, ``"convsv 1.0"``, ``"reshaped 0.2"``."""
        return self.method if self.bound is None else f"{self.method} {float(self.bound)!r}"


def parse_settings(text: str) -> list[Setting]:
    """Settings from ``"baseline,convsv:0.5,reshaped:0.2"``; ValueError naming the bad item."""
    settings = []
    for item in text.split(","):
        method, _, bound = item.strip().partition(":")
        try:
            settings.append(Setting(method, float(bound) if bound else None))
        except ValueError as error:
            msg = f"bad setting {item.strip()!r} (write baseline, convsv:BOUND or reshaped:BOUND): {error}"
            raise ValueError(msg) from None
    if len(set(settings)) != len(settings):
        msg = f"a setting is repeated in {text!r}"
        raise ValueError(msg)
    return settings


def settings_type(text: str) -> list[Setting]:
    """argparse ``type`` for a --settings option: a usage error (exit 2) that names the bad item."""
    try:
        return parse_settings(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_int(text: str) -> int:
    """argparse ``type`` for counts: seeds, epochs, steps, jobs."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"expected a positive integer, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _reshaped(layer: nn.Module) -> torch.Tensor:
    """The kernel as the matrix ``spectral_norm`` sees: its first axis against all the others."""
    weight = layer.weight.detach()
    return weight.reshape(weight.shape[0], -1)


def clip_reshaped_(model: nn.Module, bound: float) -> None:
    """Clip the singular values of every convolution's reshaped kernel to ``bound``, in place."""
    with torch.no_grad():
        for _, layer in convsv_torch.conv_layers(model):
            if not torch.isfinite(layer.weight).all():
                continue  # a diverged run: nothing to clip, and the SVD would raise
            u, s, vh = torch.linalg.svd(_reshaped(layer), full_matrices=False)
            layer.weight.copy_(((u * s.clamp(max=bound)) @ vh).reshape(layer.weight.shape))


# --- norms at the end of training ----------------------------------------------------------------


def operator_norms(model: nn.Module, example_input: torch.Tensor) -> dict[str, float]:
    """Exact operator norm of every convolution as the network applies it (zero padding, stride)."""
    norms = {}
    for name, shape in convsv_torch.input_shapes(model, example_input).items():
        layer = model.get_submodule(name)
        # NaN for a diverged run's weights. float64: the zero-padded norm is iterated to a relative 1e-6.
        weight = layer.weight.detach().double()
        options = convsv_torch.layer_options(layer, shape)
        norms[name] = float(convsv.operator_norm(weight, shape, **options))
    return norms


def reshaped_norms(model: nn.Module) -> dict[str, float]:
    """Largest singular value of every convolution's reshaped kernel."""
    norms = {}
    for name, layer in convsv_torch.conv_layers(model):
        matrix = _reshaped(layer).double()
        finite = bool(torch.isfinite(matrix).all())  # the SVD raises on NaN
        norms[name] = float(torch.linalg.matrix_norm(matrix, ord=2)) if finite else math.nan
    return norms


# --- one training run ----------------------------------------------------------------------------


def _sync(device: str | torch.device) -> None:
    """Wait for the GPU, so wall-clock times mean what they say."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class TimedClipper(convsv_torch.OperatorNormClipper):
    """OperatorNormClipper that also adds up the seconds its projections take."""

    def __init__(self, *args: Any, device: str | torch.device = "cpu", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.device, self.seconds = device, 0.0

    def __call__(self) -> list[convsv_torch.LayerReport]:
        _sync(self.device)
        start = time.perf_counter()
        report = super().__call__()
        _sync(self.device)
        self.seconds += time.perf_counter() - start
        return report


class ReshapedClipper:
    """:func:`clip_reshaped_` after every ``every``-th optimizer step, timed like TimedClipper."""

    def __init__(self, model: nn.Module, bound: float, *, every: int, device: str | torch.device) -> None:
        self.model, self.bound, self.every, self.device = model, bound, every, device
        self.steps, self.seconds = 0, 0.0

    def __call__(self) -> None:
        _sync(self.device)
        start = time.perf_counter()
        clip_reshaped_(self.model, self.bound)
        _sync(self.device)
        self.seconds += time.perf_counter() - start

    def _after_step(self, *_: Any) -> None:
        self.steps += 1
        if self.steps % self.every == 0:
            self()

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        return optimizer.register_step_post_hook(self._after_step)


def error_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` misclassified, in eval mode."""
    training = model.training
    model.eval()
    wrong = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            wrong += int((model(x[i : i + batch_size]).argmax(dim=1) != y[i : i + batch_size]).sum())
    model.train(training)
    return wrong / len(x)


def _finite(value: float) -> float | None:
    """None for NaN or infinity: JSON has neither."""
    return value if math.isfinite(value) else None


def train_run(
    model: nn.Module,
    train_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    test_data: tuple[torch.Tensor, torch.Tensor],
    setting: Setting,
    *,
    epochs: int,
    lr_at: Callable[[int], float],
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    every: int = 100,
    clip_options: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Train ``model`` with SGD and momentum under one setting; return a JSON-ready record.

    ``train_batches(e)`` gives epoch ``e``'s (shuffled, augmented) batches, ``lr_at(e)`` its
    learning rate. The setting's projection runs after every ``every``-th optimizer step;
    ``clip_options`` (``method``, ``iterations``, ``tol``) go to convsv's projection, whose
    default is the paper's single clip-and-crop step. A run whose training loss stops being
    finite ends there, marked ``diverged``.
    """
    model.to(device)
    x_test, y_test = (t.to(device) for t in test_data)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr_at(0), momentum=momentum, weight_decay=weight_decay)
    clipper: TimedClipper | ReshapedClipper | None = None
    if setting.method == "convsv":
        clipper = TimedClipper(model, setting.bound, every=every, device=device, **(clip_options or {}))
    elif setting.method == "reshaped":
        clipper = ReshapedClipper(model, setting.bound, every=every, device=device)
    if clipper is not None:
        clipper.attach(optimizer)

    history, steps, train_seconds, diverged = [], 0, 0.0, False
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        lr = lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        _sync(device)
        start = time.perf_counter()
        loss_sum, seen = torch.zeros((), device=device), 0
        for x, y in train_batches(epoch):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            seen += len(y)
            steps += 1
        train_loss = float(loss_sum) / seen  # one synchronisation per epoch
        _sync(device)
        seconds = time.perf_counter() - start
        train_seconds += seconds
        error = error_rate(model, x_test, y_test)
        history.append(
            {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": _finite(train_loss),
                "test_error": error,
                "seconds": seconds,
            }
        )
        log(
            f"{setting.label}: epoch {epoch + 1}/{epochs} lr {lr:.4g} "
            f"loss {train_loss:.4f} test error {error:.4f}"
        )
        if not math.isfinite(train_loss):
            diverged = True
            log(f"{setting.label}: the training loss is not finite; stopping this run")
            break

    op_norms = {name: _finite(v) for name, v in operator_norms(model, x_test[:1]).items()}
    rs_norms = {name: _finite(v) for name, v in reshaped_norms(model).items()}
    return {
        "setting": setting.label,
        "method": setting.method,
        "bound": setting.bound,
        "every": every,
        "history": history,
        "test_error": history[-1]["test_error"],
        "diverged": diverged,
        "operator_norms": op_norms,
        "reshaped_norms": rs_norms,
        "max_operator_norm": _max(op_norms.values()),
        "max_reshaped_norm": _max(rs_norms.values()),
        "projection_seconds": clipper.seconds if clipper is not None else 0.0,
        "train_seconds": train_seconds,
        "steps": steps,
    }


def _max(values: Iterable[float | None]) -> float | None:
    """The largest value; None if any is None (a diverged run has no meaningful maximum)."""
    values = list(values)
    return None if any(v is None for v in values) else max(values)
