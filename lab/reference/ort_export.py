"""ONNX exports of Trio's two towers, for measuring ONNX Runtime on the same weights.

    lab/reference/ort_install.sh                       # venv at /work/venvs/ort
    TRIO_HOME=~/.cache/trio /work/venvs/ort/bin/python lab/reference/ort_export.py [OUT]

writes to OUT (default `$TRIO_HOME/reference/onnx`):

- `efficientnet-lite0.onnx`: EfficientNet-Lite0 from the `.pth` Trio loads, NCHW, input
  `images (N, 3, 224, 224)`, outputs `features (N, 1280)` and `probabilities (N, 1000)`.
  TensorFlow's "SAME" padding is folded into each convolution's `pads` (stride-2 layers pad
  one more at the bottom/right), so the graph has no Pad node; batch-norm stays a node for
  ORT to fold into the convolution.
- `efficientnet-lite0.opt.onnx`: the same after ORT's offline graph optimisation (extended
  level: batch-norm folded, Conv+Clip fused), saved for inspection; the benchmark builds its
  session from the plain export at ORT's highest level, which adds the NCHWc layout.
- `minilm.onnx`: all-MiniLM-L6-v2 from `model.safetensors`, inputs `input_ids`,
  `attention_mask`, `token_type_ids` (N, S) int64, output the mean-pooled, L2-normalised
  `embeddings (N, 384)` (what Trio's text tower returns). Laid out as PyTorch exports BERT, so
  ORT's transformer optimizer recognises it.
- `minilm.opt.onnx`: after `onnxruntime.transformers.optimizer` (model type `bert`): attention,
  GELU, LayerNorm (with the residual add) and the embedding layer fused.
- `minilm.int8.onnx`: `minilm.opt.onnx` quantised dynamically, int8 weights per output channel.

The graphs are built directly from the weight files with `onnx.helper` rather than traced
through PyTorch, which keeps the venv small; `ort_check.py` checks them against Trio's golden
values.
"""

import collections
import math
import os
import pickle
import struct
import sys
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


# ------------------------------------------------------------------------------------------
# Weight files


class _Storage:
    def __init__(self, dtype, key):
        self.dtype, self.key, self.data = dtype, key, None


_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "LongStorage": np.int64, "IntStorage": np.int32}


def _rebuild_tensor(storage, offset, size, stride, *_):
    return ("tensor", storage, offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return name
        raise pickle.UnpicklingError(f"unexpected class {module}.{name}")

    def persistent_load(self, pid):
        dtype_name, key = pid[1], pid[2]  # ('storage', type, key, location, numel[, view])
        if key not in self.storages:
            self.storages[key] = _Storage(_DTYPES[dtype_name], key)
        return self.storages[key]


def read_pth(path):
    """A legacy-framed PyTorch state dict (what the EfficientNet-Lite `.pth` files are) as numpy
    arrays; the same framing `engine/src/weights/pth.rs` reads."""
    data = Path(path).read_bytes()
    f = __import__("io").BytesIO(data)
    storages = {}
    for _ in range(3):  # magic number, protocol version, sys_info
        pickle.load(f)
    state = _Unpickler(f, storages).load()
    keys = pickle.load(f)
    for key in keys:
        (numel,) = struct.unpack("<Q", f.read(8))
        s = storages[key]
        size = np.dtype(s.dtype).itemsize
        s.data = np.frombuffer(f.read(numel * size), dtype=s.dtype)
    out = {}
    for name, (_, s, offset, shape, stride) in state.items():
        item = s.data.itemsize
        out[name] = np.lib.stride_tricks.as_strided(
            s.data[offset:], shape=shape, strides=[st * item for st in stride]
        ).astype(np.float32).copy()
    return out


def read_safetensors(path):
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    kinds = {"F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        kind = kinds[info["dtype"]]
        raw = body[start:end]
        if kind is None:  # bf16: the high half of an f32
            a = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, dtype=kind)
        out[name] = a.reshape(info["shape"]).astype(np.float32)
    return out


# ------------------------------------------------------------------------------------------
# Graph building


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, array, name=None):
        self.count += 1
        name = name or f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, kind, inputs, outputs=1, domain=None, **attrs):
        self.count += 1
        names = [f"{kind.lower()}_{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(
            helper.make_node(kind, inputs, names, name=f"{kind}_{self.count}", domain=domain, **attrs)
        )
        return names[0] if outputs == 1 else names

    def model(self, inputs, outputs, name):
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def same_pads(size, kernel, stride):
    """TensorFlow "SAME": (output, before, after), as `kernels::conv::same_padding`."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


# (repeats, kernel, stride, expand ratio, input, output) of EfficientNet-Lite0.
LITE0_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
                (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
                (1, 3, 1, 6, 192, 320)]
BN_EPS = 1e-3


def export_efficientnet(weights_path, size=224):
    w = read_pth(weights_path)
    g = Graph()

    def conv_bn(x, conv, bn, hw, stride, group=1, relu6=True):
        weight = w[f"{conv}.weight"]
        k = weight.shape[2]
        out, top, bottom = same_pads(hw, k, stride)
        y = g.op("Conv", [x, g.const(weight)], kernel_shape=[k, k], strides=[stride, stride],
                 pads=[top, top, bottom, bottom], group=group)
        y = g.op("BatchNormalization", [y] + [g.const(w[f"{bn}.{p}"]) for p in
                 ("weight", "bias", "running_mean", "running_var")], epsilon=BN_EPS)
        if relu6:
            y = g.op("Clip", [y, g.const(np.float32(0.0)), g.const(np.float32(6.0))])
        return y, out

    x, hw = conv_bn("images", "_conv_stem", "_bn0", size, 2)
    i = 0
    for repeats, k, stride, expand, cin, cout in LITE0_STAGES:
        for r in range(repeats):
            block_in, s = (cin if r == 0 else cout), (stride if r == 0 else 1)
            p = f"_blocks.{i}"
            h = x
            if expand != 1:
                h, _ = conv_bn(h, f"{p}._expand_conv", f"{p}._bn0", hw, 1)
            h, out_hw = conv_bn(h, f"{p}._depthwise_conv", f"{p}._bn1", hw, s,
                                group=block_in * expand)
            h, _ = conv_bn(h, f"{p}._project_conv", f"{p}._bn2", out_hw, 1, relu6=False)
            if s == 1 and block_in == cout:
                h = g.op("Add", [h, x])
            x, hw = h, out_hw
            i += 1
    x, _ = conv_bn(x, "_conv_head", "_bn1", hw, 1)
    pooled = g.op("GlobalAveragePool", [x])
    features = g.op("Flatten", [pooled], axis=1)
    logits = g.op("Gemm", [features, g.const(w["_fc.weight"]), g.const(w["_fc.bias"])], transB=1)
    g.nodes.append(helper.make_node("Identity", [features], ["features"]))
    g.nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], axis=1))
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])
    outs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 1280]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 1000])]
    return g.model([inp], outs, "efficientnet-lite0")


def export_minilm(folder):
    cfg = json.loads((Path(folder) / "config.json").read_text())
    w = read_safetensors(Path(folder) / "model.safetensors")
    w = {k.removeprefix("bert."): v for k, v in w.items()}
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = hidden // heads
    eps = cfg.get("layer_norm_eps", 1e-12)
    g = Graph()

    def linear(x, name):
        y = g.op("MatMul", [x, g.const(w[f"{name}.weight"].T.copy())])
        return g.op("Add", [g.const(w[f"{name}.bias"]), y])

    def layer_norm(x, name):
        return g.op("LayerNormalization", [x, g.const(w[f"{name}.weight"]),
                                           g.const(w[f"{name}.bias"])], axis=-1, epsilon=eps)

    # Embeddings: words + positions 0..S + token types, then LayerNorm.
    seq = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const(np.array(1, np.int64))], axis=0)
    positions = g.op("Range", [g.const(np.array(0, np.int64)), seq, g.const(np.array(1, np.int64))])
    positions = g.op("Unsqueeze", [positions, g.const(np.array([0], np.int64))])
    emb = g.op("Add", [
        g.op("Gather", [g.const(w["embeddings.word_embeddings.weight"]), "input_ids"]),
        g.op("Gather", [g.const(w["embeddings.token_type_embeddings.weight"]), "token_type_ids"]),
    ])
    emb = g.op("Add", [emb, g.op("Gather", [g.const(w["embeddings.position_embeddings.weight"]),
                                             positions])])
    x = layer_norm(emb, "embeddings.LayerNorm")

    # The additive mask as PyTorch's BERT builds it: (1 - mask) * min, broadcast over heads.
    m = g.op("Unsqueeze", ["attention_mask", g.const(np.array([1], np.int64))])
    m = g.op("Unsqueeze", [m, g.const(np.array([2], np.int64))])
    m = g.op("Cast", [m], to=TensorProto.FLOAT)
    m = g.op("Sub", [g.const(np.float32(1.0)), m])
    mask = g.op("Mul", [m, g.const(np.float32(np.finfo(np.float32).min))])

    split = g.const(np.array([0, 0, heads, head_dim], np.int64))
    merge = g.const(np.array([0, 0, hidden], np.int64))
    for layer in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{layer}"
        q = g.op("Transpose", [g.op("Reshape", [linear(x, f"{p}.attention.self.query"), split])],
                 perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [linear(x, f"{p}.attention.self.key"), split])],
                 perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [linear(x, f"{p}.attention.self.value"), split])],
                 perm=[0, 2, 1, 3])
        scores = g.op("Div", [g.op("MatMul", [q, k]), g.const(np.float32(math.sqrt(head_dim)))])
        probs = g.op("Softmax", [g.op("Add", [scores, mask])], axis=-1)
        ctx = g.op("Reshape", [g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3]),
                               merge])
        attn = linear(ctx, f"{p}.attention.output.dense")
        x = layer_norm(g.op("Add", [attn, x]), f"{p}.attention.output.LayerNorm")
        inter = linear(x, f"{p}.intermediate.dense")
        # GELU (erf) as PyTorch exports it: x * 0.5 * (1 + erf(x / sqrt 2)).
        erf = g.op("Erf", [g.op("Div", [inter, g.const(np.float32(math.sqrt(2.0)))])])
        gelu = g.op("Mul", [g.op("Mul", [inter, g.op("Add", [erf, g.const(np.float32(1.0))])]),
                            g.const(np.float32(0.5))])
        out = linear(gelu, f"{p}.output.dense")
        x = layer_norm(g.op("Add", [out, x]), f"{p}.output.LayerNorm")

    # Mean over the real tokens, then unit length.
    fm = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT),
                            g.const(np.array([2], np.int64))])
    summed = g.op("ReduceSum", [g.op("Mul", [x, fm]), g.const(np.array([1], np.int64))],
                  keepdims=0)
    counts = g.op("Clip", [g.op("ReduceSum", [fm, g.const(np.array([1], np.int64))], keepdims=0),
                           g.const(np.float32(1e-9))])
    mean = g.op("Div", [summed, counts])
    norm = g.op("Clip", [g.op("ReduceL2", [mean], axes=[1], keepdims=1),
                         g.const(np.float32(1e-12))])
    g.nodes.append(helper.make_node("Div", [mean, norm], ["embeddings"]))
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    outs = [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", hidden])]
    return g.model(ins, outs, "all-MiniLM-L6-v2"), heads, hidden


def main():
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    home = Path(os.environ.get("TRIO_HOME", Path.home() / ".cache" / "trio"))
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else home / "reference" / "onnx"
    out.mkdir(parents=True, exist_ok=True)

    image = out / "efficientnet-lite0.onnx"
    onnx.save(export_efficientnet(home / "models" / "efficientnet-lite0" / "efficientnet-lite0.pth"),
              image)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(out / "efficientnet-lite0.opt.onnx")
    ort.InferenceSession(str(image), opts, providers=["CPUExecutionProvider"])
    counts = collections.Counter(n.op_type for n in onnx.load(str(image)).graph.node)
    opt_counts = collections.Counter(
        n.op_type for n in onnx.load(str(out / "efficientnet-lite0.opt.onnx")).graph.node)
    print(f"{image.name}: {dict(counts)}")
    print(f"  optimised: {dict(opt_counts)}")

    text = out / "minilm.onnx"
    model, heads, hidden = export_minilm(home / "models" / "all-MiniLM-L6-v2")
    onnx.save(model, text)
    opt = optimizer.optimize_model(str(text), model_type="bert", num_heads=heads,
                                   hidden_size=hidden, opt_level=0)
    opt.save_model_to_file(str(out / "minilm.opt.onnx"))
    print(f"minilm.opt.onnx fused: {opt.get_fused_operator_statistics()}")
    quantize_dynamic(out / "minilm.opt.onnx", out / "minilm.int8.onnx",
                     weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})
    q_counts = collections.Counter(n.op_type for n in onnx.load(str(out / "minilm.int8.onnx")).graph.node)
    print(f"minilm.int8.onnx: {dict(q_counts)}")


if __name__ == "__main__":
    main()
