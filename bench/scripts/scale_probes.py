"""Ideas for issue 22's fidelity targets, measured on zoo models and not built (BENCHMARKS.md, "Measured,
not built"). Run with the peer venv (onnx, onnxruntime, numpy) over a model, int8kit's Q/DQ models of it, and
raw float32 samples from `bench bench-child --dump-raw` (calibration crops, evaluation crops of other photos).

mixed-methods: activation scale methods chosen per group of tensors. DIR holds entropy/, mse/, percentile/ and
  max/, each `int8kit analyze --method M` of one .hist with the same placement; tensors are grouped by producer
  and consumer op type (a ViT's by role in the block with --vit-roles), groups of 8 or more split in thirds by
  depth; from the best single method on the selection samples, each group takes every other method in turn and
  keeps it when the selection samples gain 0.25 dB; two rounds. Prints each method alone and the mix, on the
  selection samples and on the evaluation samples.
bias-correction: empirical bias correction (Nagel et al., 2019) of a Q/DQ model: each Conv/Gemm bias minus the
  mean per-channel difference of its output from the float model's, one layer at a time (--mode seq) or all
  at once (--mode once), over the calibration samples; prints the evaluation SQNR before and after.
weight-rounding: each INT8 weight of a Q/DQ model (Conv with one group, Gemm, MatMul; int8kit's per-channel
  scales kept) rounded by GPTQ (Frantar et al., 2022: columns in turn, each one's rounding error spread over the
  columns not yet rounded through the inverse of H = E[x x^T], the layer's input patches in the Q/DQ model over
  the calibration samples) instead of to nearest. A layer whose patches number fewer than 8 per weight column
  keeps nearest rounding (H would fit those samples alone). Prints each layer's output SQNR before and after on
  H and on the evaluation samples' H, then the whole model on the evaluation samples: as built, with its
  activations left float (weights only) and with its weights left float (activations only), before and after;
  with --per-layer, the whole model with one layer's weights changed at a time.

Fidelity is the mean over samples of each sample's output SQNR in dB (a sample's energy counted as at least 1 %
of the mean), as the auto search ranks.
"""

import argparse

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

METHODS = ["entropy", "mse", "percentile", "max"]


def session(model):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def with_outputs(model, names):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    return copy


def run(sess, inp, data, names, batch=8):
    parts = [sess.run(names, {inp: data[i : i + batch]}) for i in range(0, len(data), batch)]
    return [np.concatenate([p[k].astype(np.float32) for p in parts]) for k in range(len(names))]


def mean_sample_db(ref, out):
    r = ref.reshape(len(ref), -1)
    signal = (r**2).sum(1)
    noise = ((out.reshape(len(out), -1) - r) ** 2).sum(1)
    signal = np.maximum(signal, 0.01 * signal.mean())
    return float(np.mean(10 * np.log10(signal / np.maximum(noise, 1e-30))))


def groups_of(model, vit_roles):
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    groups, seen = {}, {}
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        dq = consumers[q.output[0]][0]
        after = tuple(sorted({c.op_type for c in consumers.get(dq.output[0], [])}))
        before = producer[q.input[0]].op_type if q.input[0] in producer else "input"
        key = (before, after)
        index = seen.get(key, 0)
        seen[key] = index + 1
        if vit_roles and key == ("Add", ("MatMul",)):
            key = ("LayerNorm", "qkv" if index % 2 == 0 else "fc1")
        groups.setdefault(str(key), []).append({q.input[1], dq.input[1]})
    split = {}
    for key, members in groups.items():
        if len(members) >= 8 and not vit_roles:
            n = len(members)
            for j in range(3):
                split[f"{key}/{j}"] = members[j * n // 3 : (j + 1) * n // 3]
        else:
            split[key] = members
    return split


def mixed_methods(args):
    shape = tuple(int(d) for d in args.shape.split(","))
    calib = np.fromfile(args.calib, dtype=np.float32).reshape((-1,) + shape)
    chosen = np.random.default_rng(7).choice(len(calib), args.select, replace=False)
    select, evaluate = calib[chosen], np.fromfile(args.eval, dtype=np.float32).reshape((-1,) + shape)
    models = {m: onnx.load(f"{args.dir}/{m}/model.qdq.onnx") for m in METHODS}
    float_model = onnx.load(args.model)
    inp, out = float_model.graph.input[0].name, float_model.graph.output[0].name
    ref_select, ref_eval = (run(session(float_model), inp, d, [out])[0] for d in (select, evaluate))
    groups = groups_of(models["max"], args.vit_roles)
    scales = {m: {t.name: t for t in models[m].graph.initializer} for m in METHODS}

    def score(assign, data, ref):
        mixed = onnx.ModelProto()
        mixed.CopyFrom(models["max"])
        inits = {t.name: t for t in mixed.graph.initializer}
        for group, method in assign.items():
            for names in groups[group]:
                for name in names:
                    inits[name].CopyFrom(scales[method][name])
        return mean_sample_db(ref, run(session(mixed), inp, data, [out])[0])

    alone = {}
    for m in METHODS:
        assign = dict.fromkeys(groups, m)
        alone[m] = score(assign, select, ref_select)
        print(f"{m:10s} alone: selection {alone[m]:.2f} dB, evaluation {score(assign, evaluate, ref_eval):.2f} dB")
    start = max(alone, key=alone.get)
    assign, best = dict.fromkeys(groups, start), alone[start]
    for _ in range(2):
        for group in groups:
            for m in METHODS:
                if m != assign[group]:
                    trial = {**assign, group: m}
                    s = score(trial, select, ref_select)
                    if s > best + 0.25:
                        assign, best = trial, s
    print(f"mixed from {start}: {assign}")
    print(f"mixed: selection {best:.2f} dB, evaluation {score(assign, evaluate, ref_eval):.2f} dB")


def bias_correction(args):
    shape = tuple(int(d) for d in args.shape.split(","))
    calib = np.fromfile(args.calib, dtype=np.float32).reshape((-1,) + shape)
    evaluate = np.fromfile(args.eval, dtype=np.float32).reshape((-1,) + shape)
    float_model, qdq = onnx.load(args.model), onnx.load(args.qdq)
    inp, out = float_model.graph.input[0].name, float_model.graph.output[0].name
    inits = {t.name: t for t in qdq.graph.initializer}
    layers = [
        (n.output[0], n.input[2])
        for n in qdq.graph.node
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2] in inits
        and n.input[1].endswith("_dequantized")
    ]
    ref_eval = run(session(float_model), inp, evaluate, [out])[0]
    print(f"before: evaluation {mean_sample_db(ref_eval, run(session(qdq), inp, evaluate, [out])[0]):.2f} dB")
    names = [o for o, _ in layers]
    reference = dict(zip(names, run(session(with_outputs(float_model, names)), inp, calib, names)))

    def correct(group):
        outs = [o for o, _ in group]
        quantized = dict(zip(outs, run(session(with_outputs(qdq, outs)), inp, calib, outs)))
        for o, bias in group:
            axes = (0,) + tuple(range(2, reference[o].ndim))
            shift = (quantized[o] - reference[o]).mean(axis=axes)
            values = numpy_helper.to_array(inits[bias])
            inits[bias].CopyFrom(numpy_helper.from_array((values - shift).astype(values.dtype), bias))

    for group in ([[layer] for layer in layers] if args.mode == "seq" else [layers]):
        correct(group)
    print(f"after ({args.mode}): evaluation {mean_sample_db(ref_eval, run(session(qdq), inp, evaluate, [out])[0]):.2f} dB")


def patches(node, x, attrs):
    """Rows of a GEMM's input as its weight columns see them: im2col for a Conv, the last axis otherwise."""
    if node.op_type != "Conv":
        return x.reshape(-1, x.shape[-1])
    kh, kw = attrs.get("kernel_shape")
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = np.lib.stride_tricks.sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw]  # N, C, Ho, Wo, kh, kw
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * kh * kw)


def gptq_rows(weight, scale, h, damp=0.01):
    """Integer weights (rows = output channels) rounded column by column with GPTQ's error feedback."""
    w = weight.astype(np.float64).copy()
    h = h.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor of H^-1
    q = np.zeros_like(w)
    for i in range(w.shape[1]):
        q[:, i] = np.clip(np.round(w[:, i] / scale), -127, 127)
        err = (w[:, i] - q[:, i] * scale) / u[i, i]
        w[:, i + 1 :] -= np.outer(err, u[i, i + 1 :])
    return q


def weight_rounding(args):
    shape = tuple(int(d) for d in args.shape.split(","))
    calib = np.fromfile(args.calib, dtype=np.float32).reshape((-1,) + shape)[: args.samples]
    evaluate = np.fromfile(args.eval, dtype=np.float32).reshape((-1,) + shape)
    float_model, qdq = onnx.load(args.model), onnx.load(args.qdq)
    inp, out = float_model.graph.input[0].name, float_model.graph.output[0].name
    original = {t.name: numpy_helper.to_array(t) for t in float_model.graph.initializer}
    for n in float_model.graph.node:  # Paddle exports keep weights in Constant nodes
        if n.op_type == "Constant" and n.attribute[0].name == "value":
            original[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    inits = {t.name: t for t in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    layers = []
    for n in qdq.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type not in ("Conv", "Gemm", "MatMul") or attrs.get("group", 1) != 1:
            continue
        dq, xdq = producer.get(n.input[1]), producer.get(n.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        if xdq is None or xdq.op_type != "DequantizeLinear" or n.op_type == "Gemm" and attrs.get("transA", 0):
            continue
        name = dq.input[0][: -len("_quantized")]
        if original.get(name) is None or original[name].shape != tuple(inits[dq.input[0]].dims):
            continue  # a weight int8kit rewrote (folded, smoothed, equalized): its float values are not at hand
        layers.append((n, attrs, dq, name))
    if not layers:
        raise SystemExit("no Conv/Gemm/MatMul with an INT8 weight whose float values the float model holds")
    names = [n.input[0] for n, _, _, _ in layers]
    probe = session(with_outputs(qdq, names))
    rng = np.random.default_rng(0)

    def hessians(data):
        sums = [0.0] * len(layers)
        rows = [0] * len(layers)
        for b in range(0, len(data), 8):
            for k, x in enumerate(probe.run(names, {inp: data[b : b + 8]})):
                p = patches(layers[k][0], x.astype(np.float64), layers[k][1])
                if len(p) > 4096:
                    p = p[rng.choice(len(p), 4096, replace=False)]
                sums[k] = sums[k] + p.T @ p
                rows[k] += len(p)
        return [s / r for s, r in zip(sums, rows)], rows

    h_calib, rows = hessians(calib)
    h_eval, _ = hessians(evaluate)
    before = {}
    for k, (n, attrs, dq, name) in enumerate(layers):
        transposed = n.op_type == "MatMul" or n.op_type == "Gemm" and not attrs.get("transB", 0)
        w = original[name].astype(np.float64)
        w = (w.T if transposed else w).reshape(w.shape[1] if transposed else w.shape[0], -1)
        qt = inits[dq.input[0]]
        q0 = numpy_helper.to_array(qt)
        q0 = (q0.T if transposed else q0).reshape(w.shape).astype(np.float64)
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64).reshape(-1)
        scale = np.broadcast_to(scale, (w.shape[0],))
        if rows[k] < 8 * w.shape[1]:
            print(f"{name}: nearest ({rows[k]} patches for {w.shape[1]} columns)")
            continue
        q1 = gptq_rows(w, scale, h_calib[k], args.damp)

        def db(q, h):
            d = w - q * scale[:, None]
            return 10 * np.log10(np.einsum("ik,kl,il->", w, h, w) / np.einsum("ik,kl,il->", d, h, d))

        print(f"{name}: {w.shape[1]} columns, layer SQNR calibration {db(q0, h_calib[k]):.2f} -> "
              f"{db(q1, h_calib[k]):.2f} dB, evaluation {db(q0, h_eval[k]):.2f} -> {db(q1, h_eval[k]):.2f} dB")
        q1 = q1.T if transposed else q1.reshape(original[name].shape)
        before[dq.input[0]] = onnx.TensorProto()
        before[dq.input[0]].CopyFrom(qt)
        qt.CopyFrom(numpy_helper.from_array(q1.astype(np.int8), qt.name))

    ref = run(session(float_model), inp, evaluate, [out])[0]

    def fidelity(model):
        o = run(session(model), inp, evaluate, [out])[0]
        pooled = 10 * np.log10((ref**2).sum() / ((o - ref) ** 2).sum())
        return f"pooled {pooled:.2f} dB, per sample {mean_sample_db(ref, o):.2f} dB"

    def variant(model, keep_weights, keep_activations):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        mp = {o: n for n in m.graph.node for o in n.output}
        mi = {t.name for t in m.graph.initializer}
        rename, drop = {}, []
        for n in m.graph.node:
            if n.op_type != "DequantizeLinear":
                continue
            if n.input[0] in mi and not keep_weights and n.input[0][: -len("_quantized")] in original:
                dtype = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == n.input[1])).dtype
                t = numpy_helper.from_array(original[n.input[0][: -len("_quantized")]].astype(dtype), n.output[0])
                m.graph.initializer.append(t)
                drop.append(n)
            elif n.input[0] not in mi and not keep_activations and mp[n.input[0]].op_type == "QuantizeLinear":
                rename[n.output[0]] = mp[n.input[0]].input[0]
                drop.append(n)
        for n in drop:
            m.graph.node.remove(n)
        for n in m.graph.node:
            n.input[:] = [rename.get(i, i) for i in n.input]
        return m

    rounded = onnx.ModelProto()
    rounded.CopyFrom(qdq)
    for name, tensor in before.items():
        inits[name].CopyFrom(tensor)  # qdq back to nearest rounding
    for label, model in (("nearest", qdq), ("GPTQ", rounded)):
        print(f"{label}: {fidelity(model)}; weights only {fidelity(variant(model, True, False))}; "
              f"activations only {fidelity(variant(model, False, True))}")
    if args.per_layer:
        gptq_inits = {t.name: t for t in rounded.graph.initializer}
        for name, tensor in before.items():
            inits[name].CopyFrom(gptq_inits[name])
            print(f"only {name} rounded by GPTQ: {fidelity(qdq)}")
            inits[name].CopyFrom(tensor)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="probe", required=True)
    for name in ("mixed-methods", "bias-correction", "weight-rounding"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True, help="the float model")
        p.add_argument("--calib", required=True, help="raw float32 calibration samples")
        p.add_argument("--eval", required=True, help="raw float32 samples of other photos")
        p.add_argument("--shape", required=True, help="one sample's shape, e.g. 3,224,224")
    sub.choices["mixed-methods"].add_argument("--dir", required=True)
    sub.choices["mixed-methods"].add_argument("--select", type=int, default=32)
    sub.choices["mixed-methods"].add_argument("--vit-roles", action="store_true")
    sub.choices["bias-correction"].add_argument("--qdq", required=True)
    sub.choices["bias-correction"].add_argument("--mode", choices=["seq", "once"], default="seq")
    sub.choices["weight-rounding"].add_argument("--qdq", required=True)
    sub.choices["weight-rounding"].add_argument("--samples", type=int, default=128, help="calibration samples for H")
    sub.choices["weight-rounding"].add_argument("--damp", type=float, default=0.01, help="H += damp * mean(diag H)")
    sub.choices["weight-rounding"].add_argument("--per-layer", action="store_true")
    args = parser.parse_args()
    probes = {"mixed-methods": mixed_methods, "bias-correction": bias_correction, "weight-rounding": weight_rounding}
    probes[args.probe](args)


if __name__ == "__main__":
    main()
