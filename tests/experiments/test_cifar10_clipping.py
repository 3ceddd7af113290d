"""experiments/cifar10_clipping.py: its quick run on tiny CIFAR-format files, its loader, its errors."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
matplotlib_image = pytest.importorskip("matplotlib.image")
from cifar10_clipping import (  # noqa: E402
    CIFAR10_URL,
    ExperimentError,
    Normalise,
    augment,
    load_cifar10,
    lr_schedule,
    main,
    plot,
    read_batch,
)

BATCH_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_cifar(directory, images_per_batch=20, seed=0):
    """Batch files as CIFAR-10 ships them: dicts with bytes keys, uint8 rows of 3072, list labels."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in BATCH_NAMES:
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, images_per_batch).tolist(),
            b"data": rng.integers(0, 256, (images_per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(images_per_batch)],
        }
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = batch
    return written


def error_lines(capsys, *args):
    """Run main() in this process; its exit status and the lines it wrote to stderr."""
    status = main(list(args))
    return status, capsys.readouterr().err.strip().splitlines()


def test_quick_run_writes_results_table_and_plot(run_script, tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    # The parent directory is accepted too: the script looks for cifar-10-batches-py inside it.
    result = run_script("cifar10_clipping.py", "--data", ".", "--quick", "--batch-norm", "on", "--out", "out")
    results = json.loads((tmp_path / "out" / "results.json").read_text())

    assert (results["config"]["depth"], results["config"]["width"]) == (8, 4)
    assert results["config"]["settings"] == ["baseline", "convsv 1.0"]
    assert results["data"] == {"train_images": 100, "test_images": 20}  # 5 x 20 and 20, under the limits
    assert {"platform", "cpu_count", "torch", "convsv", "device"} <= set(results["machine"])
    runs = results["runs"]
    assert [(run["batch_norm"], run["setting"]) for run in runs] == [(True, "baseline"), (True, "convsv 1.0")]
    for run in runs:
        assert len(run["history"]) == 1
        assert run["steps"] == 7  # 100 images in batches of 16
        assert run["test_error"] in {k / 20 for k in range(21)}
        assert len(run["operator_norms"]) == 7  # depth 8: 6 n + 1 convolutions
    assert runs[0]["projection_seconds"] == 0
    assert runs[1]["projection_seconds"] > 0
    assert [row["setting"] for row in results["summary"]] == ["baseline", "convsv 1.0"]

    table = result.stdout.strip().splitlines()
    assert table[0].startswith("| setting | batch norm | final test error | max operator norm |")
    assert len(table) == 2 + len(runs)
    assert table[3].startswith(f"| convsv 1.0 | on | {100 * runs[1]['test_error']:.2f}% | ")
    assert "[batch norm on] convsv 1.0: epoch 1/1" in result.stderr

    image = matplotlib_image.imread(tmp_path / "out" / "cifar10-clipping.png")
    assert image.shape[0] > 100
    assert image.std() > 0.01  # not a blank canvas


def test_loader_reads_each_pixel_at_its_documented_offset(tmp_path):
    written = write_cifar(tmp_path, images_per_batch=3)
    x_train, y_train, x_test, y_test = load_cifar10(tmp_path)

    assert x_train.shape == (15, 3, 32, 32)
    assert x_test.shape == (3, 3, 32, 32)
    # CIFAR-10's page: the 3072 bytes of a row are the red, green and blue planes, each 32 rows of 32.
    c, i, j = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    offsets = c * 1024 + i * 32 + j
    for image in range(15):
        batch = written[f"data_batch_{image // 3 + 1}"]
        assert np.array_equal(x_train[image], batch[b"data"][image % 3][offsets])
        assert y_train[image] == batch[b"labels"][image % 3]
    assert np.array_equal(x_test[2], written["test_batch"][b"data"][2][offsets])
    assert y_test.tolist() == written["test_batch"][b"labels"]


def test_augment_crops_the_zero_padded_image_and_sometimes_mirrors_it():
    rng = np.random.default_rng(1)
    images = rng.integers(1, 256, (64, 3, 32, 32), dtype=np.uint8)  # no zeros: padding is visible
    out = augment(torch.from_numpy(images), torch.Generator().manual_seed(0)).numpy()

    assert out.shape == images.shape
    assert out.dtype == np.uint8
    found = []
    for image, crop in zip(images, out, strict=True):
        padded = np.pad(image, ((0, 0), (4, 4), (4, 4)))
        matches = [
            (top, left, flip)
            for top in range(9)
            for left in range(9)
            for flip in (False, True)
            if np.array_equal(
                crop, (lambda w: w[..., ::-1] if flip else w)(padded[:, top : top + 32, left : left + 32])
            )
        ]
        assert len(matches) == 1
        found.append(matches[0])
    assert {flip for _, _, flip in found} == {False, True}
    assert len({(top, left) for top, left, _ in found}) > 20


def test_normalise_uses_the_training_set_statistics():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    images[:, 1] //= 2  # channels with different statistics
    normalise = Normalise(images, torch.device("cpu"))
    scaled = images / 255.0

    out = normalise(torch.from_numpy(images)).numpy()
    expected = (scaled - scaled.mean(axis=(0, 2, 3), keepdims=True)) / scaled.std(
        axis=(0, 2, 3), keepdims=True
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-5)


def test_learning_rate_schedules():
    step = lr_schedule("step", 0.1, 8)
    np.testing.assert_allclose([step(e) for e in range(8)], [0.1] * 4 + [0.01] * 2 + [0.001] * 2)
    exponential = lr_schedule("exponential", 0.1, 8)
    np.testing.assert_allclose([exponential(e) for e in range(3)], [0.1, 0.095, 0.09025])


def test_plot_has_one_panel_per_batch_norm_choice(tmp_path):
    history = [{"epoch": e, "test_error": 0.5 / e} for e in (1, 2, 3)]
    runs = [
        {"batch_norm": bn, "setting": s, "method": s.split()[0], "history": history}
        for bn in (True, False)
        for s in ("baseline", "convsv 1.0")
    ]
    plot(runs, tmp_path / "two.png", "two panels")
    plot(runs[:2], tmp_path / "one.png", "one panel")
    two, one = (matplotlib_image.imread(tmp_path / name) for name in ("two.png", "one.png"))
    assert two.shape[0] == one.shape[0]
    assert two.shape[1] == 2 * one.shape[1]


def test_missing_directory_is_an_error_saying_where_to_get_cifar10(tmp_path, capsys):
    status, lines = error_lines(capsys, "--data", str(tmp_path / "nowhere"))
    assert status == 1
    assert len(lines) == 1
    assert lines[0].startswith(f"error: --data {tmp_path / 'nowhere'}: no such directory")
    assert CIFAR10_URL in lines[0]


def test_missing_batch_is_named(tmp_path, capsys):
    write_cifar(tmp_path / "data", images_per_batch=2)
    (tmp_path / "data" / "data_batch_3").unlink()
    status, lines = error_lines(capsys, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"))
    assert status == 1
    assert len(lines) == 1
    assert lines[0].startswith("error:")
    assert "missing data_batch_3 " in lines[0]
    assert CIFAR10_URL in lines[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {b"data": np.zeros((2, 3071), np.uint8)},
            "b'data' should be uint8 of shape (N, 3072), is uint8 of shape (2, 3071)",
        ),
        (
            {b"data": np.zeros((2, 3072), np.float32)},
            "b'data' should be uint8 of shape (N, 3072), is float32",
        ),
        ({b"labels": [0]}, "b'labels' should be 2 integers"),
        ({b"labels": [0, 10]}, "labels should be 0 to 9, found 0 to 10"),
    ],
)
def test_malformed_batch_is_named(tmp_path, capsys, change, message):
    write_cifar(tmp_path, images_per_batch=2)
    path = tmp_path / "data_batch_2"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]} | change))
    status, lines = error_lines(capsys, "--data", str(tmp_path), "--out", str(tmp_path / "out"))
    assert status == 1
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {path}: ")
    assert message in lines[0]


def test_batch_file_cannot_run_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}))
    with pytest.raises(
        ExperimentError, match=r"not a CIFAR-10 python batch file \(refusing to load builtins.print\)"
    ):
        read_batch(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error(run_script, tmp_path):
    write_cifar(tmp_path / "data", images_per_batch=2)
    result = run_script("cifar10_clipping.py", "--data", "data", "--device", "cuda", check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: --device cuda: ")
    assert "no CUDA device" in lines[0]


def test_bad_device_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--data", ".", "--device", "gpu0"])
    assert exit_.value.code == 2
    assert "'gpu0' is not a device: use cpu, cuda or cuda:N" in capsys.readouterr().err
