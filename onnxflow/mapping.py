"""Masks back into the framework that made the model: `map_masks`.

onnxflow keys masks by the ONNX initializer names, which exporters often invent (`val_86`,
`onnx::MatMul_171`) and whose tensors they may store transposed or reshaped (a TorchScript
export stores a Linear weight as its transpose for MatMul; tf2onnx stores HWIO kernels as
OIHW). Names cannot be trusted, values can: the exporter copies each parameter's values into
the initializer, so each masked initializer is matched to the framework parameter holding the
same values, directly or through an axis permutation and a reshape, and its mask is carried
through the same permutation into the parameter's name and shape.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxflow.errors import OnnxflowError

# Weights of at most this many dimensions are tried in every axis order (4! = 24 orders);
# larger ones only as stored and fully reversed.
MAX_PERMUTED_NDIM = 4


class MaskMappingError(OnnxflowError):
    """Some masks have no parameter, or more than one, holding their weight's values."""

    def __init__(
        self,
        unmatched: list[str],
        ambiguous: dict[str, list[str]],
        renamed_values: list[str] | None = None,
    ) -> None:
        parts = []
        if unmatched:
            parts.append(
                f"{len(unmatched)} mask(s) match no parameter by value: {', '.join(unmatched)} "
                "(is `onnx_model` the ONNX file that was pruned, exported from these "
                "parameters without folding BatchNorm into the weights?)"
            )
        if renamed_values:
            parts.append(
                "the parameters named like these weights hold other values: "
                f"{', '.join(renamed_values)} (the exporter folded something into them, as "
                "torch.onnx.export(dynamo=True) does with BatchNorm unless optimize=False)"
            )
        if ambiguous:
            listed = "; ".join(f"{k} -> {' or '.join(v)}" for k, v in ambiguous.items())
            parts.append(
                f"{len(ambiguous)} mask(s) match several parameters: {listed} "
                "(parameters with equal values, e.g. tied or constant-initialized weights; "
                "map those by hand)"
            )
        super().__init__("cannot map masks to parameters: " + "; ".join(parts))
        self.unmatched = unmatched
        self.ambiguous = ambiguous


def _as_array(value: Any) -> np.ndarray:
    """A numpy array from a numpy array, a PyTorch tensor (on any device, with grad) or a
    TensorFlow variable, without importing any framework."""
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    elif hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # tf.Variable
        value = value.numpy()
    return np.asarray(value)


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every constant tensor of the main graph by name: initializers and Constant outputs."""
    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    found[node.output[0]] = numpy_helper.to_array(attr.t)
    return found


def _orders(ndim: int) -> Iterator[tuple[int, ...]]:
    if ndim <= MAX_PERMUTED_NDIM:
        yield from itertools.permutations(range(ndim))
    else:
        yield tuple(range(ndim))
        yield tuple(reversed(range(ndim)))


def _fingerprint(a: np.ndarray) -> bytes:
    """Equal for arrays holding the same multiset of values, whatever their layout."""
    return np.sort(a.astype(np.float64, copy=False).ravel()).tobytes()


def _layouts(weight: np.ndarray, param: np.ndarray) -> list[tuple[int, ...]]:
    """Axis orders of `weight` that, reshaped to the parameter's shape, equal the parameter."""
    w = weight.astype(np.float64, copy=False)
    p = param.astype(np.float64, copy=False)
    return [
        order
        for order in _orders(w.ndim)
        if np.array_equal(np.transpose(w, order).reshape(p.shape), p)
    ]


def map_masks(
    masks: Mapping[str, np.ndarray] | str | os.PathLike[str],
    onnx_model: onnx.ModelProto | str | os.PathLike[str],
    params: Mapping[str, Any],
) -> dict[str, np.ndarray]:
    """Masks renamed and reshaped for the framework's parameters.

    Args:
        masks: onnxflow's masks by initializer name (`PruneResult.masks`, or the `--masks`
            .npz path).
        onnx_model: the ONNX model that was pruned (not the pruned output: its zeros no
            longer match the parameters), as a path or a loaded ModelProto.
        params: the framework's parameters by name, with the values that were exported:
            a PyTorch `model.state_dict()` (tensors are accepted as they are), or
            `{w.path: w.numpy() for w in keras_model.weights}`. Non-float entries
            (BatchNorm's `num_batches_tracked`) are ignored.

    Returns:
        Boolean masks by parameter name, each shaped like its parameter (`True` = kept).

    Raises:
        MaskMappingError: listing every mask that matches no parameter (a weight folded
            with BatchNorm, or another model) and every mask that matches several
            (tied or equal parameters), in one message.
    """
    if not isinstance(masks, Mapping):
        with np.load(os.fspath(masks)) as npz:
            masks = {k: npz[k] for k in npz.files}
    if not isinstance(onnx_model, onnx.ModelProto):
        onnx_model = onnx.load(os.fspath(onnx_model))
    weights = _weights(onnx_model)
    by_print: dict[tuple[int, bytes], list[tuple[str, np.ndarray]]] = {}
    for name, value in params.items():
        arr = _as_array(value)
        if not np.issubdtype(arr.dtype, np.floating) or arr.size == 0:
            continue
        by_print.setdefault((arr.size, _fingerprint(arr)), []).append((name, arr))

    found: dict[str, dict[str, np.ndarray]] = {}
    copies: dict[str, int] = {}
    stored: Counter[tuple[int, bytes]] | None = None
    unmatched: list[str] = []
    ambiguous: dict[str, list[str]] = {}
    for key, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        weight = weights.get(key)
        if weight is None or weight.shape != mask.shape:
            unmatched.append(key)
            continue
        # Per matching parameter, the distinct masks its matching layouts give: a symmetric
        # weight matches in two layouts, harmless when the mask comes out the same.
        layouts: dict[str, dict[bytes, np.ndarray]] = {}
        fingerprint = _fingerprint(weight)
        for name, param in by_print.get((weight.size, fingerprint), []):
            for order in _layouts(weight, param):
                out = np.ascontiguousarray(np.transpose(mask, order).reshape(param.shape))
                layouts.setdefault(name, {})[out.tobytes()] = out
        if not layouts:
            unmatched.append(key)
            continue
        if stored is None:  # how many tensors of the model hold each set of values
            stored = Counter(
                (w.size, _fingerprint(w))
                for w in weights.values()
                if np.issubdtype(w.dtype, np.floating)
            )
        copies[key] = stored[weight.size, fingerprint]
        if several := [f"{n} (in {len(o)} layouts)" for n, o in layouts.items() if len(o) > 1]:
            ambiguous[key] = several
        else:
            found[key] = {n: next(iter(o.values())) for n, o in layouts.items()}
    mapped = _assign(found, copies, ambiguous)
    if unmatched or ambiguous:
        arrays = {k: _as_array(v) for k, v in params.items() if k in unmatched}
        same_name = [k for k, v in arrays.items() if v.size == masks[k].size]
        raise MaskMappingError(unmatched, ambiguous, same_name)
    return mapped


def _assign(
    found: dict[str, dict[str, np.ndarray]],
    copies: dict[str, int],
    ambiguous: dict[str, list[str]],
) -> dict[str, np.ndarray]:
    """Parameter masks from each mask's candidates (parameter -> mask in its layout).

    Parameters holding equal values are common: nn.TransformerEncoder deep-copies its first
    layer, so at initialization every layer holds the same weights. Masks whose weights match
    the same set of parameters are settled together: when they all give each parameter the
    same mask and the model stores those values in no other tensor (`copies`: the exporter
    stored them once for every copy, or all copies got equal masks), every parameter gets
    it; when each mask's own name is one of the parameters (the exporter kept names), names
    pair them; otherwise they are ambiguous and added to `ambiguous`.
    """
    groups: dict[frozenset[str], list[str]] = {}
    for key, cands in found.items():
        groups.setdefault(frozenset(cands), []).append(key)
    mapped: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    for names, keys in groups.items():
        first = found[keys[0]]
        unmasked_copies = copies[keys[0]] > len(keys)  # e.g. one copy left out by `exclude`
        if not unmasked_copies and all(
            np.array_equal(found[k][n], first[n]) for k in keys[1:] for n in names
        ):
            pairs = [(n, keys[0]) for n in sorted(names)]
        elif len(keys) == len(names) and set(keys) == names:
            pairs = [(k, k) for k in keys]
        else:
            ambiguous.update({k: sorted(names) for k in keys})
            continue
        for name, key in pairs:
            if name in mapped and not np.array_equal(mapped[name], found[key][name]):
                ambiguous[key] = [f"{name} (also matched by {source[name]})"]
            mapped[name], source[name] = found[key][name], key
    return mapped
