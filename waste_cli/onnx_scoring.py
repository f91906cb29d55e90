"""ONNX graph edits for calibrating an exported model without its checkpoint: expose the pooled
features (what the classifier layer reads), and append the unfamiliarity score so that the file
computes it itself, as `models.ScoredClassifier` does in torch.

Needs onnx only (no torch): an ONNX model is calibrated where it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from waste_cli.errors import ModelError

__all__ = ["FEATURES", "UNFAMILIARITY", "set_metadata", "with_features", "with_unfamiliarity"]

FEATURES, UNFAMILIARITY = "features", "unfamiliarity"
META_KEY = "wastecls"  # backends.ONNX_META_KEY (a leaf cannot import it)
PREFIX = "wastecls_unfamiliarity/"


def set_metadata(proto: Any, meta: dict[str, Any]) -> None:
    """The wastecls metadata as one JSON entry, and each field as its own entry for tools that
    read ONNX metadata one key at a time."""
    entries = {META_KEY: json.dumps(meta)} | {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    del proto.metadata_props[:]
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)


def _logits_only(proto: Any) -> None:
    """Keep only what computes the first output (the logits): an earlier score goes."""
    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    needed, todo = set(), [graph.output[0].name]
    while todo:
        node = producers.get(todo.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            todo += list(node.input)
    kept = [node for node in graph.node if id(node) in needed]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.output[1:]
    used = {name for node in kept for name in node.input}
    initializers = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def _classifier_input(proto: Any, path: Path) -> str:
    """The tensor the final Gemm/MatMul reads: the pooled features, found by walking back from
    the logits through casts and the bias addition."""
    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    constants = {init.name for init in graph.initializer} | {
        out for node in graph.node if node.op_type == "Constant" for out in node.output}
    name = graph.output[0].name
    for _ in range(16):
        node = producers.get(name)
        if node is None:
            break
        inputs = [i for i in node.input if i and i not in constants]
        if node.op_type in ("Gemm", "MatMul") and inputs:
            return inputs[0]
        if node.op_type not in ("Add", "Cast", "Identity", "Reshape", "Flatten") or not inputs:
            break
        name = inputs[0]
    raise ModelError(f"Cannot calibrate {path}: its logits do not come from a linear classifier "
                     "layer this tool can find. Calibrate the checkpoint it was exported from.")


def _load(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:  # a damaged or foreign file: onnx raises its own types
        raise ModelError(f"Cannot read {path} as an ONNX model ({type(exc).__name__}).") from None


def with_features(path: Path, target: Path) -> None:
    """Write a copy of the ONNX model `path` with the pooled features as a second output (and
    without an earlier calibration, which that copy no longer computes)."""
    import onnx

    proto = _load(path)
    _logits_only(proto)
    entries = {entry.key: entry.value for entry in proto.metadata_props}
    try:
        meta = json.loads(entries[META_KEY])
    except (KeyError, ValueError, RecursionError):
        raise ModelError(f"{path} has no wastecls metadata. Export it with `wastecls export "
                         "--onnx`.") from None
    set_metadata(proto, {k: v for k, v in meta.items() if k != "calibration"})
    features = _classifier_input(proto, path)
    proto.graph.output.append(onnx.helper.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT,
                                                                 None))
    proto.graph.node.append(onnx.helper.make_node("Cast", [features], [FEATURES],
                                                  to=onnx.TensorProto.FLOAT,
                                                  name=PREFIX + "features"))
    onnx.save(proto, str(target))


def with_unfamiliarity(path: Path, target: Path, bank: np.ndarray, neighbours: int,
                       meta: dict[str, Any]) -> None:
    """Write a copy of the ONNX model `path` that also outputs the unfamiliarity score (1 -
    cosine similarity to the k-th nearest of `bank`'s rows, float16 as stored) and carries
    `meta`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = _load(path)
    _logits_only(proto)
    features = _classifier_input(proto, path)
    k = min(neighbours, len(bank))

    def name(part: str) -> str:
        return PREFIX + part

    proto.graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(bank.astype(np.float16).T), name("bank")),
        numpy_helper.from_array(np.array([1], np.int64), name("axis")),
        numpy_helper.from_array(np.array(1e-12, np.float32), name("eps")),
        numpy_helper.from_array(np.array(1.0, np.float32), name("one")),
        numpy_helper.from_array(np.array([k], np.int64), name("k")),
        numpy_helper.from_array(np.array(k - 1, np.int64), name("last")),
    ])
    proto.graph.node.extend([
        helper.make_node("Cast", [features], [name("f")], to=TensorProto.FLOAT, name=name("cast")),
        helper.make_node("ReduceL2", [name("f"), name("axis")], [name("norm")], keepdims=1,
                         name=name("norm")),
        helper.make_node("Max", [name("norm"), name("eps")], [name("safe")], name=name("max")),
        helper.make_node("Div", [name("f"), name("safe")], [name("unit")], name=name("div")),
        helper.make_node("Cast", [name("bank")], [name("bank32")], to=TensorProto.FLOAT,
                         name=name("bank32")),
        helper.make_node("MatMul", [name("unit"), name("bank32")], [name("sim")],
                         name=name("matmul")),
        helper.make_node("TopK", [name("sim"), name("k")], [name("top"), name("which")], axis=1,
                         name=name("topk")),
        helper.make_node("Gather", [name("top"), name("last")], [name("kth")], axis=1,
                         name=name("kth")),
        helper.make_node("Sub", [name("one"), name("kth")], [UNFAMILIARITY], name=name("sub")),
    ])
    proto.graph.output.append(helper.make_tensor_value_info(UNFAMILIARITY, TensorProto.FLOAT,
                                                            ["batch"]))
    set_metadata(proto, meta)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(target))
