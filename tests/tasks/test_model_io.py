import pickle

import pytest
import torch

from tasks.errors import UserError
from tasks.model_io import ModelSpec, load_model, save_model


def _spec():
    return ModelSpec({"kind": "cnn", "widths": [8], "hidden": 8, "dropout": 0.0}, (1, 8, 8), [5, 6, 7], {"trained_on": "target"})


def test_round_trip_rebuilds_the_same_network(tmp_path):
    network = _spec().build()
    save_model(network.state_dict(), _spec(), tmp_path)
    loaded, spec = load_model(tmp_path)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(network.eval()(x), loaded(x))
    assert spec.classes == [5, 6, 7] and spec.extra["trained_on"] == "target"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


class _Payload:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_posing_as_weights_is_refused_without_running(tmp_path):
    save_model(_spec().build().state_dict(), _spec(), tmp_path)
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps(payload))
    with pytest.raises(UserError, match="not a safetensors weights file"):
        load_model(tmp_path)
    assert not marker.exists()


def test_weights_of_the_wrong_shape_are_named(tmp_path):
    save_model(_spec().build().state_dict(), _spec(), tmp_path)
    other = ModelSpec({"kind": "cnn", "widths": [16], "hidden": 8, "dropout": 0.0}, (1, 8, 8), [5, 6, 7], {})
    save_model(other.build().state_dict(), _spec(), tmp_path)
    with pytest.raises(UserError, match="weights do not fit the spec"):
        load_model(tmp_path)
