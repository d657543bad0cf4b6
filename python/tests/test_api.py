"""The Python API on the installed wheel (run by `cargo xtask test` through `cargo xtask wheel`, from a folder
outside the checkout, with INT8KIT_FIXTURES naming the repository's fixtures)."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import int8kit

FIXTURES = Path(os.environ["INT8KIT_FIXTURES"])
MODELS = FIXTURES / "models"
RECIPE = FIXTURES / "fmnist.toml"
RESNET = MODELS / "fmnist_resnet_opset13.onnx"
FIVE = [
    "fmnist_resnet_opset13.onnx",
    "fmnist_vit_opset13.onnx",
    "fmnist_vit_opset17.onnx",
    "fmnist_vit_opset18.onnx",
    "fmnist_clip_image_opset17.onnx",
]


@pytest.fixture(scope="module")
def calib_folder(tmp_path_factory):
    """The first 48 calibration images, in a folder of their own (the folder run uses all of them)."""
    folder = tmp_path_factory.mktemp("calib")
    for p in sorted((FIXTURES / "fmnist" / "calib").iterdir())[:48]:
        shutil.copy(p, folder / p.name)
    return folder


def batches(values, sizes):
    """`values` cut into batches of the given sizes, cycling."""
    start, i = 0, 0
    while start < len(values):
        n = sizes[i % len(sizes)]
        yield values[start : start + n]
        start, i = start + n, i + 1


@pytest.mark.parametrize("model", FIVE)
def test_iterable_of_recipe_batches_gives_the_folder_hist_byte_for_byte(model, calib_folder):
    folder = int8kit.calibrate(MODELS / model, str(calib_folder), recipe=RECIPE, hold_out=0, quiet=True)
    images = int8kit.preprocess(sorted(calib_folder.iterdir()), recipe=RECIPE)
    assert images.shape == (48, 1, 28, 28)
    name = calib_folder.name
    given = int8kit.calibrate(MODELS / model, batches(images, [5, 16, 1]), recipe=RECIPE, name=name, quiet=True)
    assert given.samples == folder.samples == 48
    assert given.to_bytes() == folder.to_bytes()
    # Another batching, and another order, of the same values: the very same bytes.
    again = int8kit.calibrate(MODELS / model, batches(images[::-1], [48]), recipe=RECIPE, name=name, quiet=True)
    assert again.to_bytes() == folder.to_bytes()
    # One sample changed, or one left out: another identity.
    changed = images.copy()
    changed[3, 0, 0, 0] += 1.0
    other = int8kit.calibrate(MODELS / model, batches(changed, [16]), recipe=RECIPE, name=name, quiet=True)
    fewer = int8kit.calibrate(MODELS / model, batches(images[1:], [16]), recipe=RECIPE, name=name, quiet=True)
    identity = lambda s: json.loads(s.to_bytes())["images"]["samples_sha256"]
    assert len({identity(folder), identity(other), identity(fewer)}) == 3


def test_an_iterable_is_smoothed_by_default_from_its_first_samples():
    # A ViT (it has attention) is smoothed from the maxima of the first 64 samples; smooth="off" keeps it as it is.
    vit = MODELS / "fmnist_vit_opset17.onnx"
    images = int8kit.preprocess(sorted((FIXTURES / "fmnist" / "calib").iterdir())[:80], recipe=RECIPE)
    record = lambda s: json.loads(s.to_bytes()).get("smoothing")
    smoothed = record(int8kit.calibrate(vit, batches(images, [16]), recipe=RECIPE, quiet=True))
    assert smoothed["alpha"] == 0.5 and smoothed["samples"] == 64, smoothed
    assert record(int8kit.calibrate(vit, batches(images, [16]), recipe=RECIPE, smooth="off", quiet=True)) is None
    with pytest.raises(int8kit.InputError, match="alpha must be from 0 to 1"):
        int8kit.calibrate(vit, batches(images, [16]), recipe=RECIPE, smooth=1.5, quiet=True)


def test_dict_batches_give_the_npz_folder_statistics(tmp_path, calib_folder):
    images = int8kit.preprocess(sorted(calib_folder.iterdir()), recipe=RECIPE)
    samples = tmp_path / "npz"
    samples.mkdir()
    for i, image in enumerate(images):
        np.savez(samples / f"{i:04}.npz", input=image[None])
    folder = int8kit.calibrate(RESNET, str(samples), hold_out=0, quiet=True)
    given = int8kit.calibrate(RESNET, ({"input": b} for b in batches(images, [7])), name="npz", quiet=True)
    assert given.to_bytes() == folder.to_bytes()
    # A bare array feeds the model's only input.
    bare = int8kit.calibrate(RESNET, batches(images, [7]), name="npz", quiet=True)
    assert bare == given


def test_float16_batches_are_their_float32_values(calib_folder):
    # A loader of float16 arrays (as for a model with an FP16 input) feeds the same values as float32.
    images = int8kit.preprocess(sorted(calib_folder.iterdir()), recipe=RECIPE).astype(np.float16)
    wide = int8kit.calibrate(RESNET, batches(images.astype(np.float32), [8]), name="f16", quiet=True)
    assert int8kit.calibrate(RESNET, batches(images, [8]), name="f16", quiet=True) == wide


class LoaderLike:
    """What a torch DataLoader is to int8kit (torch is not installed in CI's time): re-iterable, with len(),
    yielding objects that expose only __array__."""

    class Tensor:
        def __init__(self, a):
            self._a = a

        def __array__(self, dtype=None, copy=None):
            return self._a

    def __init__(self, images, size):
        self.images, self.size = images, size

    def __len__(self):
        return -(-len(self.images) // self.size)

    def __iter__(self):
        for b in batches(self.images, [self.size]):
            yield self.Tensor(b)


def test_array_like_and_dlpack_batches_are_read(calib_folder):
    images = int8kit.preprocess(sorted(calib_folder.iterdir()), recipe=RECIPE)
    plain = int8kit.calibrate(RESNET, batches(images, [8]), recipe=RECIPE, quiet=True)
    loader = LoaderLike(images, 8)
    assert int8kit.calibrate(RESNET, loader, recipe=RECIPE, quiet=True) == plain
    assert int8kit.calibrate(RESNET, loader, recipe=RECIPE, quiet=True) == plain, "a loader is re-iterable"

    class Dl:
        def __init__(self, a):
            self._a = a

        def __dlpack__(self, **kwargs):
            return self._a.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self._a.__dlpack_device__()

    assert int8kit.calibrate(RESNET, (Dl(b) for b in batches(images, [8])), recipe=RECIPE, quiet=True) == plain
    # Not C-contiguous (a transposed view): copied, same values.
    fortran = (np.asfortranarray(b) for b in batches(images, [8]))
    assert int8kit.calibrate(RESNET, fortran, recipe=RECIPE, quiet=True) == plain


def test_statistics_save_load_and_feed_quantize(tmp_path, calib_folder):
    images = int8kit.preprocess(sorted(calib_folder.iterdir()), recipe=RECIPE)
    stats = int8kit.calibrate(RESNET, batches(images, [16]), recipe=RECIPE, quiet=True)
    stats.save(tmp_path / "s.hist")
    assert int8kit.Statistics.load(tmp_path / "s.hist") == stats
    q = int8kit.quantize(RESNET, stats, tmp_path / "q", quiet=True)
    assert q.model.is_file()
    assert q.scales and all(s > 0 for s in q.scales.values())
    assert q.chosen["chosen_by"] in ("defaults", "flags")
    assert [f for f in int8kit.lint(q.model) if f.severity == "error"] == []
    # The same from the folder measures itself on held-back samples.
    qf = int8kit.quantize(RESNET, str(FIXTURES / "fmnist" / "calib"), tmp_path / "qf", recipe=RECIPE, limit=200,
                          quiet=True)
    assert qf.self_check["status"] == "measured"


def test_quantize_from_an_iterable_holds_back_what_the_folder_run_holds_back(tmp_path):
    paths = sorted((FIXTURES / "fmnist" / "calib").iterdir())[:200]
    images = int8kit.preprocess(paths, recipe=RECIPE)
    q = int8kit.quantize(RESNET, batches(images, [32, 7]), tmp_path / "q", recipe=RECIPE, quiet=True)
    assert q.self_check["status"] == "measured", q.self_check
    assert q.self_check["fidelity"]["images"] == 20, "a tenth of 200 samples"
    assert q.chosen["chosen_by"] == "measurement"
    # The statistics are those of the other 180 samples (the 20 of lowest priority held back): the same as
    # calibrating them alone.
    held = sorted(range(200), key=lambda i: (int8kit._native.hold_out_priority(0, i), i))[:20]
    rest = np.delete(images, held, axis=0)
    alone = int8kit.calibrate(RESNET, batches(rest, [50]), recipe=RECIPE, quiet=True)
    assert alone.samples == 180
    again = int8kit.quantize(RESNET, alone, tmp_path / "q2", recipe=RECIPE, method=q.chosen["method"],
                             float_type=q.chosen["float_type"], residual=q.chosen["residual"], quiet=True)
    assert again.scales == q.scales
    # A folder of the same images holds back the same samples: the same choices, the same model, byte for byte
    # (rounded to nearest, as from an iterable: GPTQ reads the folder's other samples).
    folder = tmp_path / "calib"
    folder.mkdir()
    for p in paths:
        shutil.copy(p, folder / p.name)
    assert "weight_rounding" not in q.ranges
    qf = int8kit.quantize(RESNET, str(folder), tmp_path / "qf", recipe=RECIPE, weight_rounding="nearest", quiet=True)
    assert qf.self_check["fidelity"] == q.self_check["fidelity"]
    assert qf.chosen == q.chosen
    assert qf.model.read_bytes() == q.model.read_bytes()
    # Another seed holds back others.
    other = int8kit.quantize(RESNET, batches(images, [32]), tmp_path / "q4", recipe=RECIPE, seed=5, quiet=True)
    assert other.self_check["fidelity"] != q.self_check["fidelity"]
    # hold_out=0: nothing held back, so nothing to measure the choices on; hold_out=N: N held back.
    none = int8kit.quantize(RESNET, batches(images, [32]), tmp_path / "q3", recipe=RECIPE, hold_out=0, quiet=True)
    assert none.self_check["status"] == "skipped"
    some = int8kit.quantize(RESNET, batches(images, [32]), tmp_path / "q5", recipe=RECIPE, hold_out=30, quiet=True)
    assert some.self_check["fidelity"]["images"] == 30


def test_quantize_measures_on_given_check_samples_from_a_folder_or_an_iterable(tmp_path):
    paths = sorted((FIXTURES / "fmnist" / "calib").iterdir())[:200]
    calib, check = paths[:160], paths[160:]
    folders = {}
    for name, files in (("calib", calib), ("check", check)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for p in files:
            shutil.copy(p, folders[name] / p.name)
    qf = int8kit.quantize(RESNET, str(folders["calib"]), tmp_path / "qf", recipe=RECIPE, check=str(folders["check"]),
                          weight_rounding="nearest", quiet=True)
    assert qf.self_check["status"] == "measured", qf.self_check
    assert qf.self_check["fidelity"]["images"] == 40, "every given sample, none held back"
    assert qf.chosen["chosen_by"] == "measurement"
    # From iterables (the check samples as the recipe makes them): nothing held back, the same statistics,
    # choices and model as the folders give.
    images, given = int8kit.preprocess(calib, recipe=RECIPE), int8kit.preprocess(check, recipe=RECIPE)
    qi = int8kit.quantize(RESNET, batches(images, [32, 7]), tmp_path / "qi", recipe=RECIPE,
                          check=batches(given, [16]), quiet=True)
    assert qi.self_check["fidelity"] == qf.self_check["fidelity"]
    assert qi.chosen == qf.chosen
    assert qi.model.read_bytes() == qf.model.read_bytes()
    # From statistics of all 160 samples, which alone have nothing to measure on: the given samples decide.
    stats = int8kit.calibrate(RESNET, batches(images, [50]), recipe=RECIPE, quiet=True)
    assert stats.samples == 160
    qs = int8kit.quantize(RESNET, stats, tmp_path / "qs", check=batches(given, [8]), quiet=True)
    assert qs.chosen == qf.chosen
    assert qs.model.read_bytes() == qf.model.read_bytes()
    # Holding back calibration samples that nothing would measure is refused, before anything is written.
    with pytest.raises(int8kit.InputError, match="hold_out"):
        int8kit.quantize(RESNET, str(folders["calib"]), tmp_path / "qh", recipe=RECIPE, check=str(folders["check"]),
                         hold_out=8, quiet=True)
    assert not (tmp_path / "qh").exists()


def test_shards_merge_to_the_whole_run(calib_folder):
    whole = int8kit.calibrate(RESNET, str(calib_folder), recipe=RECIPE, quiet=True)
    parts = [int8kit.calibrate(RESNET, str(calib_folder), recipe=RECIPE, shard=(i, 3), quiet=True) for i in (1, 2, 3)]
    assert int8kit.merge(parts) == whole
    with pytest.raises(int8kit.InputError, match="shard"):
        int8kit.merge(parts[:2])


def untimed(value):
    """A report's part without its speeds and durations (the only things two runs may differ in)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if not k.endswith(("_per_s", "seconds"))}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def labelled_val(n):
    """(images, labels) batches of the first n images of every class folder of the fixture's val set."""
    paths, labels = [], []
    for folder in sorted((FIXTURES / "fmnist" / "val").iterdir()):
        label = int(folder.name.split("-")[0])
        for p in sorted(folder.iterdir())[:n]:
            paths.append(p)
            labels.append(label)
    images = int8kit.preprocess(paths, recipe=RECIPE)
    return images, np.array(labels)


def test_generator_fed_validate(tmp_path):
    calib = int8kit.preprocess(sorted((FIXTURES / "fmnist" / "calib").iterdir())[:200], recipe=RECIPE)
    images, labels = labelled_val(20)
    val = ((images[i : i + 32], labels[i : i + 32]) for i in range(0, len(images), 32))
    report = int8kit.validate(RESNET, batches(calib, [32]), val, tmp_path / "v", recipe=RECIPE, min_cosine=0.99,
                              max_top1_drop=2.0, seed=3, quiet=True)
    assert report.passed, report
    assert report.comparison["images"] == 200
    assert report.comparison["fp32"]["top1"] > 0.5
    assert len(report.per_class()) == 10 and sum(r["images"] for r in report.per_class()) == 200
    assert report.to_dict()["passed"] is True
    # The same images from folders: the same samples held back, the same choices, the same measurements.
    calib_dir, val_dir = tmp_path / "calib", tmp_path / "val"
    calib_dir.mkdir()
    for p in sorted((FIXTURES / "fmnist" / "calib").iterdir())[:200]:
        shutil.copy(p, calib_dir / p.name)
    for folder in sorted((FIXTURES / "fmnist" / "val").iterdir()):
        (val_dir / folder.name).mkdir(parents=True)
        for p in sorted(folder.iterdir())[:20]:
            shutil.copy(p, val_dir / folder.name / p.name)
    from_folders = int8kit.validate(RESNET, str(calib_dir), str(val_dir), tmp_path / "vf", recipe=RECIPE,
                                    min_cosine=0.99, max_top1_drop=2.0, seed=3, quiet=True)
    for key in ("comparison", "fp16", "criteria", "passed"):
        assert untimed(from_folders.to_dict()[key]) == untimed(report.to_dict()[key]), key
    # A gate that cannot hold: passed is False, or GateFailed when asked to raise.
    strict = dict(min_cosine=0.999999999, quiet=True)
    # Statistics of bare arrays (no recipe), for validation samples fed as arrays by input name.
    calib_stats = int8kit.calibrate(RESNET, batches(calib, [32]), quiet=True)
    val2 = lambda: ((images[i : i + 50], labels[i : i + 50]) for i in range(0, len(images), 50))  # noqa: E731
    failed = int8kit.validate(RESNET, calib_stats, val2(), tmp_path / "v2", **strict)
    assert failed.passed is False
    with pytest.raises(int8kit.GateFailed) as e:
        int8kit.validate(RESNET, calib_stats, val2(), tmp_path / "v3", raise_on_fail=True, **strict)
    assert e.value.report.passed is False


def test_validate_streams_an_iterable_and_equals_its_npz_folder(tmp_path, monkeypatch):
    """The evaluation samples go from the iterable to the models, never to disk, regrouped into the batches a
    folder of them makes: the rows equal that folder's whatever the iterable's batch sizes."""
    def no_spill(*_args, **_kwargs):
        raise AssertionError("validate wrote the iterable's samples to disk")

    monkeypatch.setattr(int8kit, "spill", no_spill)
    calib = int8kit.preprocess(sorted((FIXTURES / "fmnist" / "calib").iterdir())[:96], recipe=RECIPE)
    stats = int8kit.calibrate(RESNET, batches(calib, [32]), quiet=True)
    images, labels = labelled_val(13)
    cuts = list(batches(np.arange(len(images)), [7, 50, 1, 13]))
    streamed = int8kit.validate(RESNET, stats, ((images[c], labels[c]) for c in cuts), tmp_path / "s",
                                min_cosine=0.9, quiet=True)
    folder = tmp_path / "npz"
    for i, (image, label) in enumerate(zip(images, labels)):
        (folder / f"{label}-{label}").mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"{label}-{label}" / f"{i:08d}.npz", input=image[None])
    listed = int8kit.validate(RESNET, stats, str(folder), tmp_path / "f", min_cosine=0.9, quiet=True)
    for key in ("comparison", "fp16", "criteria", "passed", "classes"):
        assert untimed(listed.to_dict()[key]) == untimed(streamed.to_dict()[key]), key
    assert streamed.comparison["images"] == 130 and streamed.validation_folder == "<iterable>"
    assert len(streamed.validation_samples_sha256) == 64
    assert "validation_samples_sha256" not in listed.to_dict()
    # A baseline holds on the same samples (by their bytes), and is refused on others.
    same = ((images[c], labels[c]) for c in batches(np.arange(len(images)), [64]))
    again = int8kit.validate(RESNET, stats, same, tmp_path / "b", baseline=tmp_path / "s" / "report.json",
                             max_top1_drop=1.0, quiet=True)
    assert again.passed and again.validation_samples_sha256 == streamed.validation_samples_sha256
    other = ((images[c][:, :, ::-1].copy(), labels[c]) for c in batches(np.arange(len(images)), [64]))
    with pytest.raises(int8kit.InputError, match="a baseline holds only on the same samples"):
        int8kit.validate(RESNET, stats, other, tmp_path / "o", baseline=tmp_path / "s" / "report.json",
                         max_top1_drop=1.0, quiet=True)
    # Labels on some batches only, and Top-1 gates without labels, are refused with the samples named.
    mixed = iter([(images[:4], labels[:4]), images[4:8]])
    with pytest.raises(int8kit.InputError, match="sample 4 has no label"):
        int8kit.validate(RESNET, stats, mixed, tmp_path / "m", quiet=True)
    with pytest.raises(int8kit.InputError, match="--max-top1-drop gates on Top-1, which needs labels"):
        int8kit.validate(RESNET, stats, iter([images[:8]]), tmp_path / "u", max_top1_drop=1.0, quiet=True)


def test_bad_batches_raise_the_command_lines_errors(tmp_path):
    good = np.zeros((4, 1, 28, 28), np.float32)
    with pytest.raises(int8kit.InputError, match="'pixels' is not an input of the model"):
        int8kit.calibrate(RESNET, [{"pixels": good}])
    with pytest.raises(int8kit.InputError, match="takes float32 but is given float64"):
        int8kit.calibrate(RESNET, [good.astype(np.float64)])
    with pytest.raises(int8kit.InputError, match="the recipe makes"):
        int8kit.calibrate(RESNET, [np.zeros((4, 3, 28, 28), np.float32)], recipe=RECIPE, quiet=True)
    with pytest.raises(int8kit.InputError, match="uint32 is not fed"):
        int8kit.calibrate(RESNET, [good.astype(np.uint32)], quiet=True)
    with pytest.raises(int8kit.InputError, match="limit"):
        int8kit.calibrate(RESNET, [good], limit=10)
    with pytest.raises(int8kit.InputError, match="gave no samples"):
        int8kit.calibrate(RESNET, [], quiet=True)
    with pytest.raises(int8kit.InputError, match="missing.onnx"):
        int8kit.calibrate(tmp_path / "missing.onnx", [good], quiet=True)
    with pytest.raises(int8kit.InputError, match="unexpected argument"):
        int8kit.quantize(RESNET, str(FIXTURES / "fmnist" / "calib"), tmp_path / "q", recipe=RECIPE, no_such_flag=1)
    assert issubclass(int8kit.InputError, int8kit.Int8kitError)


def test_a_recipe_of_several_sizes_preprocesses_one_size_and_is_refused_for_iterables(tmp_path):
    sizes = tmp_path / "sizes.toml"
    sizes.write_text(RECIPE.read_text().replace("size = [28, 28]", "sizes = [[28, 28], [20, 24]]"))
    paths = sorted((FIXTURES / "fmnist" / "calib").iterdir())[:3]
    with pytest.raises(int8kit.InputError, match="pass size="):
        int8kit.preprocess(paths, recipe=sizes)
    small = int8kit.preprocess(paths, recipe=sizes, size=(20, 24))
    assert small.shape == (3, 1, 20, 24)
    # The first size is the one-size recipe's batch.
    np.testing.assert_array_equal(int8kit.preprocess(paths, recipe=sizes, size=(28, 28)), int8kit.preprocess(paths, recipe=RECIPE))
    # Batches from an iterable come at one size: a recipe of several is refused, naming them.
    with pytest.raises(int8kit.InputError, match="several sizes"):
        int8kit.calibrate(RESNET, [small], recipe=sizes, quiet=True)


def test_an_iterable_that_fails_stops_the_run():
    def broken():
        yield np.zeros((4, 1, 28, 28), np.float32)
        raise ValueError("the loader broke")

    with pytest.raises(ValueError, match="the loader broke"):
        int8kit.calibrate(RESNET, broken(), quiet=True)
    # The process is fine afterwards: the stop request was cleared.
    ok = int8kit.calibrate(RESNET, [np.zeros((4, 1, 28, 28), np.float32)], quiet=True)
    assert ok.samples == 4


def test_memory_stays_flat_over_a_long_generator():
    batch = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)

    def generator(n):
        for _ in range(n):
            yield batch.copy()

    int8kit.calibrate(RESNET, generator(500), threads=2, quiet=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    stats = int8kit.calibrate(RESNET, generator(10_000), threads=2, quiet=True)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert stats.samples == 80_000
    assert grown_mib < 32, f"peak RSS grew {grown_mib:.0f} MiB over 20x more batches"


def test_validate_memory_stays_flat_over_a_long_generator(tmp_path):
    """The evaluation samples stream through the three models: ten times the batches, the same peak RSS."""
    calib = int8kit.preprocess(sorted((FIXTURES / "fmnist" / "calib").iterdir())[:64], recipe=RECIPE)
    stats = int8kit.calibrate(RESNET, batches(calib, [32]), quiet=True)
    batch = np.random.default_rng(1).standard_normal((4, 1, 28, 28)).astype(np.float32)

    def generator(n):
        for _ in range(n):
            yield batch.copy()

    int8kit.validate(RESNET, stats, generator(150), tmp_path / "short", quiet=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    report = int8kit.validate(RESNET, stats, generator(1500), tmp_path / "long", quiet=True)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert report.comparison["images"] == 6000
    assert grown_mib < 32, f"peak RSS grew {grown_mib:.0f} MiB over 10x more batches"


def test_ctrl_c_stops_the_run_and_writes_nothing(tmp_path):
    out = tmp_path / "q"
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, int8kit
        def endless():
            b = np.zeros((8, 1, 28, 28), np.float32)
            first = True
            while True:
                if first:
                    print("started", flush=True)
                    first = False
                yield b
        try:
            int8kit.quantize({str(RESNET)!r}, endless(), {str(out)!r}, quiet=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("Ctrl-C did not stop the run within 30 s")
    assert (code, proc.stdout.read().strip()) == (130, "interrupted")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "nothing staged is left beside the output"


def test_the_command_runs_in_process(tmp_path):
    exe = Path(sys.executable).with_name("int8kit")
    done = subprocess.run([str(exe), "lint", str(tmp_path / "missing.onnx")], capture_output=True, text=True)
    assert done.returncode == 2 and "error:" in done.stderr and "missing.onnx" in done.stderr
    assert subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout.startswith("int8kit ")
