"""Two ideas for issue 22's fidelity targets, measured on zoo models and not built (BENCHMARKS.md, "Measured,
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="probe", required=True)
    for name in ("mixed-methods", "bias-correction"):
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
    args = parser.parse_args()
    (mixed_methods if args.probe == "mixed-methods" else bias_correction)(args)


if __name__ == "__main__":
    main()
