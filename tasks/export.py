"""Export: a compressed model as safetensors + JSON, and as ONNX checked against PyTorch.

A torch.ao-quantized model is not a plain state dict (quantized tensors, packed tuples, dtypes),
so safetensors cannot hold it as-is. `encode_state` stores exactly its tensors: int8 values as
int8, per-channel scales and zero points as tensors, per-tensor ones and the layout in a JSON
manifest; `load_compressed` rebuilds the quantized module from the recipe and loads them back.
ONNX: the fp32 network is exported (torch.ao-quantized modules cannot be), run with onnxruntime
on the test split and compared with PyTorch before anything is written; a quantized pick ships
that file quantized by onnxruntime (dynamic int8), checked against the torch int8 model's argmax.
Pure apart from temporary files that onnx and onnxruntime need; flows/compress.py writes outputs.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tasks.config import OnnxConfig
from tasks.errors import UserError
from tasks.io import load_json
from tasks.model_io import ModelSpec, load_weights

SEP = "::"  # never in a torch parameter name, so encoded keys cannot collide


# ------------------------------------------------------------------------------- quantized torch
@contextmanager
def int8_kernels_allowed():
    """torch.ao's int8 kernels refuse to run under torch.use_deterministic_algorithms(True), which
    Lightning's `deterministic=True` switches on for the rest of the process."""
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def quantize_like(network: nn.Module, quantization: dict, calibration: np.ndarray | None = None) -> nn.Module:
    """Apply a quantization recipe to a copy of an fp32 network. Static quantization observes the
    activation ranges on `calibration` (any rows of the right shape when the weights and ranges
    will be loaded afterwards)."""
    network = copy.deepcopy(network).eval()
    with warnings.catch_warnings(), int8_kernels_allowed():
        warnings.simplefilter("ignore")  # torch.ao announces its move to torchao on every call
        if quantization["kind"] == "dynamic":
            quantized = torch.ao.quantization.quantize_dynamic(network, {nn.Linear, nn.LSTM}, dtype=torch.qint8)
            if quantization.get("conv_weights") == "int8":
                swap_convs(quantized)
            return quantized
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = quantization["engine"]  # process-wide: the kernels int8 ops use
        example = torch.as_tensor(calibration[:1])
        prepared = prepare_fx(network, get_default_qconfig_mapping(quantization["engine"]), example_inputs=(example,))
        with torch.inference_mode():
            for start in range(0, len(calibration), 64):
                prepared(torch.as_tensor(calibration[start:start + 64]))
        return convert_fx(prepared)


class Int8WeightConv2d(nn.Module):
    """A Conv2d whose weights are stored int8 (symmetric, one scale per output channel) and
    dequantized in each forward pass: weight-only int8. The dynamic candidate uses it for convs
    because torch.ao's dynamic Conv2d returns wrong outputs in this torch (measured on 2.13: a
    3x3 conv off by its whole output range) and its default dynamic mapping has no conv at all."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        weight = conv.weight.detach()
        scale = weight.abs().amax(dim=(1, 2, 3)).clamp(min=1e-12) / 127
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None, None, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("weight_scale", scale.float())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        if conv.padding_mode != "zeros":
            raise NotImplementedError(f"int8 conv weights: padding_mode {conv.padding_mode!r} (only zeros)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_int8.float() * self.weight_scale[:, None, None, None]
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def swap_convs(module: nn.Module) -> None:
    """Every nn.Conv2d below `module` becomes an Int8WeightConv2d, in place."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            setattr(module, name, Int8WeightConv2d(child))
        else:
            swap_convs(child)


def encode_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """A quantized state dict as plain tensors (for safetensors) + a JSON manifest of its layout."""
    tensors: dict[str, torch.Tensor] = {}
    manifest: dict[str, dict] = {}

    def encode(key: str, value) -> None:
        if isinstance(value, torch.dtype):
            manifest[key] = {"dtype": str(value).removeprefix("torch.")}
        elif isinstance(value, tuple):
            manifest[key] = {"tuple": len(value)}
            for i, item in enumerate(value):
                encode(f"{key}{SEP}{i}", item)
        elif value is None:
            manifest[key] = {"none": True}
        elif value.is_quantized and value.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            tensors[key] = value.int_repr().contiguous()
            tensors[f"{key}{SEP}scales"] = value.q_per_channel_scales().contiguous()
            tensors[f"{key}{SEP}zero_points"] = value.q_per_channel_zero_points().contiguous()
            manifest[key] = {"quantized": "per_channel", "axis": int(value.q_per_channel_axis())}
        elif value.is_quantized:
            tensors[key] = value.int_repr().contiguous()
            manifest[key] = {"quantized": "per_tensor", "scale": float(value.q_scale()), "zero_point": int(value.q_zero_point())}
        else:
            tensors[key] = value.detach().contiguous()

    for key, value in state.items():
        encode(key, value)
    # Quantized modules read their layout version from the state dict's metadata when loading.
    versions = {prefix: meta["version"] for prefix, meta in getattr(state, "_metadata", {}).items() if "version" in meta}
    return tensors, {"layout": manifest, "versions": versions}


def decode_state(tensors: dict[str, torch.Tensor], encoding: dict) -> dict:
    manifest = encoding.get("layout", {})

    def decode(key: str):
        entry = manifest.get(key, {})
        if "dtype" in entry:
            return getattr(torch, entry["dtype"])
        if "tuple" in entry:
            return tuple(decode(f"{key}{SEP}{i}") for i in range(entry["tuple"]))
        if entry.get("none"):
            return None
        if entry.get("quantized") == "per_channel":
            return torch._make_per_channel_quantized_tensor(tensors[key], tensors[f"{key}{SEP}scales"],
                                                            tensors[f"{key}{SEP}zero_points"], entry["axis"])
        if entry.get("quantized") == "per_tensor":
            return torch._make_per_tensor_quantized_tensor(tensors[key], entry["scale"], entry["zero_point"])
        return tensors[key]

    tops = {k for k in manifest if SEP not in k} | {k for k in tensors if SEP not in k}
    state = OrderedDict((key, decode(key)) for key in sorted(tops))
    state._metadata = OrderedDict((prefix, {"version": v}) for prefix, v in encoding.get("versions", {}).items())
    return state


def load_compressed(folder: str | Path) -> tuple[nn.Module, ModelSpec]:
    """Rebuild what flows/compress.py wrote: fp32 (original, pruned, student) or torch int8."""
    folder = Path(folder)
    blob = load_json(folder / "model.json")
    spec = ModelSpec.from_json(blob)
    tensors = load_weights(folder / "model.safetensors")
    quantization = blob.get("compression", {}).get("quantization")
    network = spec.build().eval()
    if quantization:
        network = quantize_like(network, quantization, np.zeros((1, *spec.in_shape), dtype=np.float32))
    state = decode_state(tensors, blob.get("encoding", {}))
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{folder / 'model.safetensors'}: weights do not fit model.json ({str(e).splitlines()[0]})") from None
    return network.eval(), spec


def torch_logits(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    model.eval()
    with torch.inference_mode(), warnings.catch_warnings(), int8_kernels_allowed():
        warnings.simplefilter("ignore")
        return torch.cat([model(torch.as_tensor(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]).numpy()


# -------------------------------------------------------------------------------------------- ONNX
def onnx_bytes(network: nn.Module, in_shape: tuple[int, ...]) -> bytes:
    """The dynamo exporter, batch dimension dynamic, weights inside the one file."""
    with tempfile.TemporaryDirectory(prefix="trainflow-onnx-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(copy.deepcopy(network).eval(), (torch.zeros(2, *in_shape),), str(path), dynamo=True,
                          input_names=["x"], output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                          external_data=False, verbose=False)
        return path.read_bytes()


def quantize_onnx(model: bytes) -> bytes:
    """onnxruntime dynamic int8: Conv and MatMul weights int8, activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="trainflow-onnx-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(model)
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
        return target.read_bytes()


def onnx_session(model: bytes, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def onnx_logits(session, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch_size].astype(np.float32)})[0]
                           for i in range(0, len(x), batch_size)])


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict:
    return {"max_abs_diff": float(np.abs(reference - candidate).max()),
            "argmax_agreement": float((reference.argmax(axis=1) == candidate.argmax(axis=1)).mean())}


def export_onnx(fp32: nn.Module, quantized: nn.Module | None, in_shape: tuple[int, ...], x: np.ndarray, y: np.ndarray,
                cfg: OnnxConfig, threads: int = 1) -> tuple[bytes, dict]:
    """The ONNX file to ship and its parity report; a `UserError` (nothing written) when the fp32
    export disagrees with PyTorch beyond `cfg.atol` / `cfg.min_argmax_agreement`, or the int8 file
    with the torch int8 model beyond `cfg.min_quantized_agreement`."""
    model = onnx_bytes(fp32, in_shape)
    check = parity(torch_logits(fp32, x), onnx_logits(onnx_session(model, threads), x))
    report = {"fp32": check | {"atol": cfg.atol, "min_argmax_agreement": cfg.min_argmax_agreement}}
    if check["max_abs_diff"] > cfg.atol or check["argmax_agreement"] < cfg.min_argmax_agreement:
        raise UserError(f"ONNX parity failed: max |diff| {check['max_abs_diff']:.2e} (allowed {cfg.atol}), argmax agreement "
                        f"{check['argmax_agreement']:.4f} (needed {cfg.min_argmax_agreement}); model.onnx not written")
    if quantized is None:
        return model, report | {"shipped": "fp32"}
    int8 = quantize_onnx(model)
    int8_logits = onnx_logits(onnx_session(int8, threads), x)
    check = parity(torch_logits(quantized, x), int8_logits)
    report["int8"] = check | {"min_argmax_agreement": cfg.min_quantized_agreement,
                              "accuracy": float((int8_logits.argmax(axis=1) == y).mean())}
    if check["argmax_agreement"] < cfg.min_quantized_agreement:
        raise UserError(f"ONNX int8 parity failed: argmax agreement with the torch int8 model {check['argmax_agreement']:.4f} "
                        f"(needed compress.onnx.min_quantized_agreement {cfg.min_quantized_agreement}); model.onnx not written")
    return int8, report | {"shipped": "int8 (onnxruntime dynamic)"}
