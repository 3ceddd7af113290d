"""``convsv analyze`` on Keras models, against Keras' own layers (see ``common``)."""

from __future__ import annotations

import pytest

from .common import analyze_json, check_rows, keras_layers

# The command line computes with NumPy unless told otherwise.
pytestmark = pytest.mark.backend("numpy")


def test_keras_model(capsys, keras, keras_files):
    model, paths = keras_files
    rows = analyze_json(capsys, paths["static"])
    check_rows(rows, keras_layers(keras, model, 12))
    assert [row["input_shape"] for row in rows] == [[12, 12], [12, 12], [6, 6], [4, 4], [4, 4]]


@pytest.mark.parametrize("size", [12, 8])
def test_keras_dynamic_input(capsys, keras, keras_files, size):
    model, paths = keras_files
    rows = analyze_json(capsys, paths["dynamic"], "--input-size", size)
    check_rows(rows, keras_layers(keras, model, size))
    if size == 12:
        assert rows == analyze_json(capsys, paths["static"])
