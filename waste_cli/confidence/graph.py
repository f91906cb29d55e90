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

from waste_cli.core.errors import ModelError
from waste_cli.model.metadata import META_KEY

__all__ = ["FEATURES", "UNFAMILIARITY", "logits_nodes", "set_metadata", "with_features",
           "with_unfamiliarity"]

FEATURES, UNFAMILIARITY = "features", "unfamiliarity"
PREFIX = "wastecls_unfamiliarity/"


def set_metadata(proto: Any, meta: dict[str, Any]) -> None:
    """The wastecls metadata as one JSON entry, and each field as its own entry for tools that
    read ONNX metadata one key at a time."""
    entries = {META_KEY: json.dumps(meta)} | {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    del proto.metadata_props[:]
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)


def logits_nodes(graph: Any) -> list[Any]:
    """The nodes that compute the first output (the logits), in graph order."""
    producers = {out: node for node in graph.node for out in node.output}
    needed, todo = set(), [graph.output[0].name]
    while todo:
        node = producers.get(todo.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            todo += list(node.input)
    return [node for node in graph.node if id(node) in needed]


def _logits_only(proto: Any) -> None:
    """Keep only what computes the first output (the logits): an earlier score goes."""
    graph = proto.graph
    kept = logits_nodes(graph)
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


def _stage_output(proto: Any, module: str, path: Path) -> str:
    """The output of module `module` (a timm name such as `blocks.4`): that of the last node
    the exporter recorded in its scope."""
    last = None
    for node in proto.graph.node:
        scopes = next((p.value for p in node.metadata_props
                       if p.key == "pkg.torch.onnx.name_scopes"), "")
        if f"'{module}'" in scopes or f".{module}'" in scopes:
            last = node
    if last is None:
        raise ModelError(f"Cannot calibrate {path}: it does not say which of its nodes are "
                         f"{module} (it was not exported by this wastecls, or was quantized). "
                         "Calibrate the checkpoint it was exported from.")
    return last.output[0]


def _unit_nodes(source: str, name: str) -> list[Any]:
    """Nodes that scale each row of `source` to unit length, into `name`."""
    from onnx import TensorProto, helper

    return [
        helper.make_node("Cast", [source], [name + "/f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceL2", [name + "/f", PREFIX + "axis"], [name + "/norm"],
                         keepdims=1),
        helper.make_node("Max", [name + "/norm", PREFIX + "eps"], [name + "/safe"]),
        helper.make_node("Div", [name + "/f", name + "/safe"], [name]),
    ]


def _constants() -> list[Any]:
    from onnx import numpy_helper

    return [numpy_helper.from_array(np.array([1], np.int64), PREFIX + "axis"),
            numpy_helper.from_array(np.array([2, 3], np.int64), PREFIX + "spatial"),
            numpy_helper.from_array(np.array(1e-12, np.float32), PREFIX + "eps"),
            numpy_helper.from_array(np.array(1.0, np.float32), PREFIX + "one")]


def with_features(path: Path, target: Path, mid_level: str | None) -> None:
    """Write a copy of the ONNX model `path` whose second output is what
    `models.FeatureClassifier` returns: the unit-length pooled output of module `mid_level`
    (None: left out) beside the unit-length pooled final features. The copy drops an earlier
    calibration, which it no longer computes."""
    import onnx
    from onnx import helper, numpy_helper

    proto = _load(path)
    _logits_only(proto)
    entries = {entry.key: entry.value for entry in proto.metadata_props}
    try:
        meta = json.loads(entries[META_KEY])
    except (KeyError, ValueError, RecursionError):
        raise ModelError(f"{path} has no wastecls metadata. Export it with `wastecls export "
                         "--onnx`.") from None
    set_metadata(proto, {k: v for k, v in meta.items() if k != "calibration"})
    parts = []
    nodes = _unit_nodes(_classifier_input(proto, path), PREFIX + "final")
    if mid_level is not None:
        nodes += [helper.make_node("ReduceMean", [_stage_output(proto, mid_level, path),
                                                  PREFIX + "spatial"], [PREFIX + "pooled"],
                                   keepdims=0),
                  *_unit_nodes(PREFIX + "pooled", PREFIX + "mid")]
        parts.append(PREFIX + "mid")
    parts.append(PREFIX + "final")
    proto.graph.initializer.extend([*_constants(), numpy_helper.from_array(
        np.array(1 / np.sqrt(len(parts)), np.float32), PREFIX + "scale")])
    nodes += [helper.make_node("Concat", parts, [PREFIX + "both"], axis=1),
              helper.make_node("Mul", [PREFIX + "both", PREFIX + "scale"], [FEATURES])]
    proto.graph.node.extend(nodes)
    proto.graph.output.append(onnx.helper.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT,
                                                                 None))
    onnx.save(proto, str(target))


def with_unfamiliarity(path: Path, target: Path, bank: np.ndarray, neighbours: int,
                       meta: dict[str, Any]) -> None:
    """Write a copy of the ONNX model `path` (a `with_features` copy) whose second output is the
    unfamiliarity score: 1 - cosine similarity of its features to the k-th nearest of `bank`'s
    rows (float16, as stored). It carries `meta`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = _load(path)
    k = min(neighbours, len(bank))
    proto.graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(bank.astype(np.float16).T), PREFIX + "bank"),
        numpy_helper.from_array(np.array([k], np.int64), PREFIX + "k"),
        numpy_helper.from_array(np.array(k - 1, np.int64), PREFIX + "last"),
    ])

    def name(part: str) -> str:
        return PREFIX + part

    proto.graph.node.extend([
        *_unit_nodes(FEATURES, name("unit")),
        helper.make_node("Cast", [name("bank")], [name("bank32")], to=TensorProto.FLOAT),
        helper.make_node("MatMul", [name("unit"), name("bank32")], [name("sim")]),
        helper.make_node("TopK", [name("sim"), name("k")], [name("top"), name("which")], axis=1),
        helper.make_node("Gather", [name("top"), name("last")], [name("kth")], axis=1),
        helper.make_node("Sub", [name("one"), name("kth")], [UNFAMILIARITY]),
    ])
    del proto.graph.output[1:]
    proto.graph.output.append(helper.make_tensor_value_info(UNFAMILIARITY, TensorProto.FLOAT,
                                                            ["batch"]))
    set_metadata(proto, meta)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(target))
