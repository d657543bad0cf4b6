"""int8kit from Python: the pipeline of the ``int8kit`` command, fed by folders or by your own data loader.

Each function mirrors a command and takes the command's flags as keyword arguments (``batch_size=64`` is
``--batch-size 64``, ``quiet=True`` is ``--quiet``; see ``int8kit <command> --help``). Data is a folder path,
as on the command line, or any iterable of batches:

* a numpy array (a model with one input), a dict ``{input_name: array}``, or, for validation data, an
  ``(inputs, labels)`` pair;
* torch tensors and any object with ``__dlpack__`` or ``__array__`` are read without a copy where their
  memory is C-contiguous on the CPU;
* batches may differ in size; ``len()`` of the iterable, when it has one, sizes the progress bar.

Calibration pulls the iterable while ONNX Runtime runs the previous batch (a queue of two batches: memory
stays flat however long the iterable is). Errors are :class:`InputError` with the command line's message;
Ctrl-C stops a run at its next batch and writes nothing.
"""

from __future__ import annotations

import glob
import importlib.util
import itertools
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union


def _use_package_onnxruntime() -> None:
    """Points int8kit at the libonnxruntime.so of this environment's onnxruntime package (the wheel's
    dependency) unless ORT_DYLIB_PATH names one already. The package is located, not imported: its Python
    module would load a second copy of the library."""
    if os.environ.get("ORT_DYLIB_PATH"):
        return
    spec = importlib.util.find_spec("onnxruntime")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(glob.glob(os.path.join(folder, "capi", "libonnxruntime.so*")))
        if found:
            os.environ["ORT_DYLIB_PATH"] = found[-1]
            return


_use_package_onnxruntime()

from . import _native  # noqa: E402  (after the library path is set)
from ._native import InputError, Int8kitError  # noqa: E402
from ._data import HeldBack, PathLike, counted_batches, is_folder, spill  # noqa: E402

__version__: str = _native.__version__

__all__ = [
    "Finding",
    "GateFailed",
    "InputError",
    "Int8kitError",
    "Quantized",
    "Report",
    "Statistics",
    "autoprecision",
    "calibrate",
    "lint",
    "merge",
    "preprocess",
    "quantize",
    "sensitivity",
    "validate",
]


class GateFailed(Int8kitError):
    """A gate failed (validate's criteria, autoprecision's budget): raised only when asked
    (``raise_on_fail=True``); otherwise the result's ``passed`` is False. ``.report`` holds the result."""

    def __init__(self, message: str, report: Any):
        super().__init__(message)
        self.report = report


def _flags(options: Mapping[str, Any]) -> List[str]:
    """Keyword arguments as the command line's flags."""
    argv: List[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, tuple) and len(value) == 2:  # shard=(1, 4) -> --shard 1/4
            argv += [flag, f"{value[0]}/{value[1]}"]
        else:
            argv += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return argv


def _run(command: str, *args: Union[str, os.PathLike], **options: Any) -> int:
    """Runs ``int8kit COMMAND ...`` in this process; returns 0 or 1 (a failed gate), raises InputError on 2."""
    argv = ["int8kit", command, *[os.fspath(a) for a in args], *_flags(options)]
    return _status(*_native.run_cli(argv))


def _status(code: int, error: Optional[str]) -> int:
    """A run's exit status: 0, or 1 for a failed gate; InputError with the command line's message for 2."""
    if code == 2:
        raise InputError(error)
    return code


class Statistics:
    """Activation statistics of one calibration: what ``int8kit calibrate`` writes as a ``.hist`` file."""

    def __init__(self, hist_bytes: bytes):
        self._bytes = bytes(hist_bytes)
        self._dict: Optional[Dict[str, Any]] = None

    @staticmethod
    def load(path: PathLike) -> "Statistics":
        """Reads and checks a ``.hist`` file."""
        return Statistics(_native.read_hist(os.fspath(path)))

    def save(self, path: PathLike) -> None:
        """Writes the ``.hist`` file (atomically: a reader never sees half of it)."""
        _native.write_hist(self._bytes, os.fspath(path))

    def to_bytes(self) -> bytes:
        """The ``.hist`` file's bytes."""
        return self._bytes

    def to_dict(self) -> Dict[str, Any]:
        """The ``.hist`` as a dict (FORMATS.md, ``.hist``)."""
        if self._dict is None:
            self._dict = json.loads(self._bytes)
        return self._dict

    @property
    def samples(self) -> int:
        """Samples the statistics cover."""
        return int(self.to_dict()["images"]["count"])

    @property
    def tensors(self) -> Dict[str, Dict[str, Any]]:
        """Per activation: ``count``, ``min``, ``max`` (and the histogram, ``hist``)."""
        return {t["name"]: t for t in self.to_dict()["tensors"]}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Statistics) and other._bytes == self._bytes

    def __repr__(self) -> str:
        d = self.to_dict()
        return f"Statistics(model={d['model']['file']!r}, samples={self.samples}, tensors={len(d['tensors'])})"


def merge(parts: Sequence[Statistics]) -> Statistics:
    """Merges the statistics of every shard of one calibration (``calibrate(..., shard=(i, n))``), as
    ``int8kit merge`` does: the result equals one process's over the whole folder, byte for byte."""
    return Statistics(_native.merge_hists([p.to_bytes() for p in parts]))


def _recipe_text(recipe: Optional[PathLike], preset: Optional[str]) -> Optional[str]:
    if recipe is not None and preset is not None:
        raise InputError("give recipe= or preset=, not both")
    if preset is not None:
        return _native.preset_recipe(preset)
    if recipe is not None:
        return Path(recipe).read_text()
    return None


def calibrate(
    model: PathLike,
    data: Any,
    *,
    recipe: Optional[PathLike] = None,
    preset: Optional[str] = None,
    name: str = "python-iterable",
    threads: int = 0,
    tensors: str = "quantizable",
    device: str = "cpu",
    quiet: bool = False,
    **collect: Any,
) -> Statistics:
    """Streams ``data`` through ``model`` and returns the activation statistics (``int8kit calibrate``).

    ``data``: a folder of images or ``.npz`` samples (every ``calibrate`` flag applies: ``limit``,
    ``seed``, ``batch_size``, ``shard``, ``smooth``, ``hold_out``, ``on_bad_image``), or an iterable of
    batches. With ``recipe``/``preset``, an iterable's batches are the float32 arrays that recipe makes (see
    :func:`preprocess`) and the statistics record the recipe, as a folder run's do; without, arrays are fed
    by input name as stored, like ``.npz`` samples. An iterable is fed whole, in order (no limit, shard or
    held-back slice: those choose from a listed folder; ``seed`` is only recorded; ``smooth`` takes its maxima
    from the first 64 samples); ``name`` is
    what the ``.hist`` calls the data. For the same values, with ``name`` the folder's name, the ``.hist``
    equals the folder run's byte for byte, whatever the batch sizes and order.
    """
    if is_folder(data):
        with tempfile.TemporaryDirectory(prefix="int8kit-") as tmp:
            out = os.path.join(tmp, "calibration.hist")
            _run(
                "calibrate",
                model=model,
                images=data,
                recipe=recipe,
                preset=preset,
                threads=threads,
                tensors=tensors,
                device=device,
                quiet=quiet,
                out=out,
                **collect,
            )
            return Statistics.load(out)
    seed = collect.pop("seed", 0)
    smooth = str(collect.pop("smooth", "auto"))
    if collect:
        raise InputError(
            f"{', '.join(sorted(collect))}: these choose from a listed folder; an iterable is fed whole, in order"
        )
    batches, total = counted_batches(data)
    hist = _native.calibrate_iter(
        os.fspath(model), batches, _recipe_text(recipe, preset), name, total, threads, tensors, device, quiet, seed,
        smooth,
    )
    return Statistics(hist)


def preprocess(paths: Sequence[PathLike], *, recipe: Optional[PathLike] = None, preset: Optional[str] = None,
               size: Optional[Tuple[int, int]] = None) -> Any:
    """The float32 batch (numpy) that ``recipe``/``preset`` makes of these image files, exactly as the
    command line's calibration does (decode, resize, crop, normalize); ``size=(height, width)`` picks one of a
    recipe's ``sizes`` (or any other size, with ``resize_to`` scaled as the command line scales it)."""
    import numpy as np

    text = _recipe_text(recipe, preset)
    if text is None:
        raise InputError("preprocess needs recipe= or preset=")
    data, shape = _native.preprocess([os.fspath(p) for p in paths], text, tuple(size) if size is not None else None)
    return np.frombuffer(data, dtype="<f4").reshape(shape).copy()


class _Calibration:
    """Where a command's statistics come from: a folder (``--calib``/``--images``) or a ``.hist``
    (``--hist``), made from Statistics or an iterable inside a temporary folder. From an iterable, with
    ``hold_back``, the samples a folder run of the same samples would hold back (``hold_out``: ``None`` for a
    tenth, at most 64, chosen by ``seed``) are kept out of the statistics and written for ``--check``, so that
    the ``auto`` choices and the self-check are measured as for a folder."""

    def __init__(self, model: PathLike, data: Any, tmp: str, recipe: Optional[PathLike], preset: Optional[str],
                 quiet: bool, device: str, hold_back: bool = False, hold_out: Optional[int] = None,
                 seed: int = 0):
        self.folder: Optional[str] = None
        self.hist: Optional[str] = None
        self.check: Optional[str] = None
        if is_folder(data):
            self.folder = os.fspath(data)
            return
        if isinstance(data, Statistics):
            stats = data
        else:
            held = HeldBack(seed, hold_out) if hold_back else None
            stream = held.stream(data) if held else data
            stats = calibrate(model, stream, recipe=recipe, preset=preset, quiet=quiet, device=device, seed=seed)
            if held:
                self.check = held.write(os.path.join(tmp, "check"), _native.input_names(os.fspath(model)))
        self.hist = os.path.join(tmp, "calibration.hist")
        stats.save(self.hist)


@dataclass
class Quantized:
    """What :func:`quantize` wrote: the artifact folder, the Q/DQ model, ranges.json's contents."""

    out: Path
    model: Path
    ranges: Dict[str, Any]

    @property
    def scales(self) -> Dict[str, float]:
        """The Q/DQ scale of every quantized activation, by tensor name."""
        return {t["name"]: t["scale"] for t in self.ranges["tensors"] if t.get("quantized")}

    @property
    def self_check(self) -> Dict[str, Any]:
        """The written model against FP32 on the held-back samples (``status``, ``fidelity``)."""
        return self.ranges["self_check"]

    @property
    def chosen(self) -> Dict[str, Any]:
        """What was chosen and how: method, attention, residual, float type, ``chosen_by``, and the search if
        any."""
        r = self.ranges
        return {k: r.get(k) for k in ("method", "attention", "residual", "float_type", "chosen_by", "search")}


def quantize(model: PathLike, data: Any, out: PathLike, *, recipe: Optional[PathLike] = None,
             preset: Optional[str] = None, hold_out: Optional[int] = None, check: Any = None, quiet: bool = False,
             device: str = "cpu", **scheme: Any) -> Quantized:
    """Calibrates and writes the INT8 artifacts into ``out`` (``int8kit quantize``).

    ``data``: a calibration folder, :class:`Statistics`, or an iterable of batches. From a folder or an
    iterable, samples are held back from the statistics (a seeded tenth, at most 64, chosen by ``seed``;
    ``hold_out=N`` for another count, 0 for none): an iterable holds back the samples a folder of the same
    samples in the same order would, so both make the same artifacts. The ``auto`` choices and the self-check
    are measured on them. From :class:`Statistics` nothing is at hand to measure
    on: the ``auto`` choices take fixed defaults. ``scheme``: the scheme flags (``method``, ``target``,
    ``attention``, ``float_type``, ``precision``, ``weight_rounding``, ...). GPTQ weight rounding reads the
    calibration folder: from an iterable or :class:`Statistics` the weights are rounded to nearest (a folder run
    with ``weight_rounding="nearest"`` makes the same model).

    ``check``: samples to measure on instead of held-back ones (``--check``; a folder or an iterable of batches,
    as ``data``): every calibration sample then goes into the statistics, and ``hold_out`` may only be 0 or
    left out. With :class:`Statistics` as ``data`` they are what the ``auto`` choices are measured on."""
    if check is not None and hold_out not in (None, 0):
        raise InputError(
            "check= gives the samples to measure on, so hold_out= would hold back calibration samples that nothing "
            "measures: leave hold_out out (or give 0), or leave check out to measure on held-back ones"
        )
    with tempfile.TemporaryDirectory(prefix="int8kit-") as tmp:
        given = None
        if check is not None:
            given = os.fspath(check) if is_folder(check) else spill(
                check, os.path.join(tmp, "given"), False, _native.input_names(os.fspath(model)))
        if is_folder(data):
            _run("quantize", model=model, images=data, recipe=recipe, preset=preset, hold_out=hold_out,
                 check=given, quiet=quiet, device=device, out=out, **scheme)
        else:
            seed = scheme.pop("seed", 0)
            source = _Calibration(model, data, tmp, recipe, preset, quiet, device,
                                  hold_back=hold_out != 0 and given is None, hold_out=hold_out, seed=seed)
            _run("analyze", model=model, hist=source.hist, check=given or source.check, quiet=quiet, out=out,
                 **scheme)
    out = Path(out)
    return Quantized(out=out, model=out / "model.qdq.onnx", ranges=json.loads((out / "ranges.json").read_text()))


class Report:
    """validate's report.json: every field as an attribute (``report.comparison``, ``report.criteria``),
    ``passed``, ``to_dict()``, and the per-class rows."""

    def __init__(self, out: Path):
        self.out = out
        self._dict: Dict[str, Any] = json.loads((out / "report.json").read_text())

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["_dict"][key]
        except KeyError:
            raise AttributeError(key) from None

    def to_dict(self) -> Dict[str, Any]:
        """report.json as a dict (FORMATS.md, ``report.json``)."""
        return self._dict

    @property
    def passed(self) -> bool:
        """Whether every criterion held."""
        return bool(self._dict["passed"])

    def per_class(self) -> List[Dict[str, Any]]:
        """One row per class: ``class``, ``name``, ``images``, ``fp32_correct``, ``int8_correct``."""
        c = self._dict["comparison"]
        names = self._dict.get("classes") or []
        rows = []
        for label, (fp32, int8) in enumerate(zip(c["fp32"]["per_class"], c["int8"]["per_class"])):
            rows.append({"class": label, "name": names[label] if label < len(names) else str(label),
                         "images": fp32[1], "fp32_correct": fp32[0], "int8_correct": int8[0]})
        return rows

    def __repr__(self) -> str:
        c = self._dict["comparison"]
        return (f"Report(passed={self.passed}, images={c['images']}, agreement={c['agreement']:.4f}, "
                f"cosine={c['cosine_mean']:.5f}, sqnr_db={c['sqnr_db']})")


#: What ``--val`` says (in the report's ``validation_folder``) when the samples come from an iterable.
_STREAM_NAME = "<iterable>"


def _val_flags(model: PathLike, val: Any, tmp: str, recipe: Optional[PathLike], preset: Optional[str]) -> Dict[str, Any]:
    """``--val`` and the recipe flags: a folder as given (the recipe applies to image folders only), or an
    iterable written once as ``.npz`` samples (for sensitivity and autoprecision, which read their samples
    once per model variant)."""
    if not is_folder(val):
        inputs = _native.input_names(os.fspath(model))
        return {"val": spill(val, os.path.join(tmp, "val"), labelled=True, inputs=inputs)}
    images = not glob.glob(os.path.join(os.fspath(val), "**", "*.npz"), recursive=True)
    return {"val": os.fspath(val), "recipe": recipe if images else None, "preset": preset if images else None}


def _gate(code: int, result: Any, raise_on_fail: bool, what: str) -> Any:
    if code == 1 and raise_on_fail:
        raise GateFailed(f"{what} failed", result)
    return result


def validate(model: PathLike, calib: Any, val: Any, out: PathLike, *, recipe: Optional[PathLike] = None,
             preset: Optional[str] = None, raise_on_fail: bool = False, quiet: bool = False, device: str = "cpu",
             **gates: Any) -> Report:
    """The release gate (``int8kit validate``): FP32, FP16 and INT8 on ``val``, the report in ``out``.

    ``calib``: a folder, :class:`Statistics` or an iterable (calibrated first, a seeded tenth, at most 64,
    held back to measure the ``auto`` choices on, as :func:`quantize` does; ``seed`` and ``hold_out`` as there). ``val``: a folder, or an
    iterable of ``inputs`` or ``(inputs, labels)`` batches (labels: integer class indexes; with ``recipe``
    or ``preset``, inputs are the float32 images it makes, as :func:`preprocess` gives), pulled while the
    models run the previous batch (constant memory, nothing written to disk) and regrouped into the batches a
    folder of the same samples would make, so the rows equal that folder's; ``--limit-val``, shards and class
    lists need a folder. ``gates``:
    ``max_top1_drop``, ``min_cosine``, ``min_sqnr``, ``min_agreement``, ``baseline``, and the scheme flags
    (``weight_rounding`` as :func:`quantize` takes it: GPTQ reads a calibration folder, so from an iterable or
    :class:`Statistics` the weights are rounded to nearest). A failed gate gives ``passed == False``, or raises :class:`GateFailed` with ``raise_on_fail``."""
    held: Dict[str, Any] = {}
    if not is_folder(calib) and not isinstance(calib, Statistics):
        # The iterable's held-back samples are chosen here, as the command line chooses a folder's.
        held = {"hold_out": gates.pop("hold_out", None), "seed": gates.pop("seed", 0)}
    with tempfile.TemporaryDirectory(prefix="int8kit-") as tmp:
        source = _Calibration(model, calib, tmp, recipe, preset, quiet, device,
                              hold_back=held.get("hold_out") != 0, **held)
        flags = dict(model=model, calib=source.folder, hist=source.hist, check=source.check, quiet=quiet,
                     device=device, out=out, **gates)
        if is_folder(val):
            code = _run("validate", **flags, **_val_flags(model, val, tmp, recipe, preset))
        else:
            code = _validate_streamed(val, dict(flags, recipe=recipe, preset=preset))
    return _gate(code, Report(Path(out)), raise_on_fail, "validate")


def _validate_streamed(val: Iterable[Any], flags: Dict[str, Any]) -> int:
    """``int8kit validate`` with the evaluation samples pulled from ``val`` while the models run (constant
    memory, nothing written to disk); labelled when the first batch is an ``(inputs, labels)`` pair."""
    batches, total = counted_batches(val, labelled=True)
    first = next(batches, None)
    labelled = first is not None and first[1] is not None
    argv = ["int8kit", "validate", "--val", _STREAM_NAME, *_flags(flags)]
    return _status(*_native.validate_iter(argv, itertools.chain([first] if first else [], batches), total, labelled))


def sensitivity(model: PathLike, calib: Any, val: Any, out: PathLike, *, recipe: Optional[PathLike] = None,
                preset: Optional[str] = None, quiet: bool = False, device: str = "cpu", **options: Any) -> Dict[str, Any]:
    """Per node, the damage of quantizing it alone (``int8kit sensitivity``); returns sensitivity.json.
    ``calib`` and ``val`` as in :func:`validate`."""
    with tempfile.TemporaryDirectory(prefix="int8kit-") as tmp:
        source = _Calibration(model, calib, tmp, recipe, preset, quiet, device)
        hist = source.hist or _hist_of_folder(model, source.folder, tmp, recipe, preset, quiet, device)
        _run("sensitivity", model=model, hist=hist, quiet=quiet, device=device, out=out,
             **_val_flags(model, val, tmp, recipe, preset), **options)
    return json.loads((Path(out) / "sensitivity.json").read_text())


def autoprecision(model: PathLike, calib: Any, val: Any, out: PathLike, *, recipe: Optional[PathLike] = None,
                  preset: Optional[str] = None, raise_on_fail: bool = False, quiet: bool = False,
                  device: str = "cpu", **budget: Any) -> Dict[str, Any]:
    """The smallest deny list meeting a budget (``int8kit autoprecision``); returns ranges.json of the
    artifacts built with it plus ``passed``. ``calib`` and ``val`` as in :func:`validate`."""
    with tempfile.TemporaryDirectory(prefix="int8kit-") as tmp:
        source = _Calibration(model, calib, tmp, recipe, preset, quiet, device)
        hist = source.hist or _hist_of_folder(model, source.folder, tmp, recipe, preset, quiet, device)
        code = _run("autoprecision", model=model, hist=hist, quiet=quiet, device=device, out=out,
                    **_val_flags(model, val, tmp, recipe, preset), **budget)
    result = json.loads((Path(out) / "ranges.json").read_text()) if (Path(out) / "ranges.json").exists() else {}
    result["passed"] = code == 0
    return _gate(code, result, raise_on_fail, "autoprecision")


def _hist_of_folder(model: PathLike, folder: Optional[str], tmp: str, recipe: Optional[PathLike],
                    preset: Optional[str], quiet: bool, device: str) -> str:
    path = os.path.join(tmp, "calibration.hist")
    calibrate(model, folder, recipe=recipe, preset=preset, quiet=quiet, device=device).save(path)
    return path


@dataclass(frozen=True)
class Finding:
    """One lint finding: ``severity`` (``error``: TensorRT rejects the model; ``warning``: a layer stays out
    of INT8 or unfused), ``rule``, ``node``, ``message`` and the rule's ``source``."""

    severity: str
    rule: str
    node: str
    message: str
    source: str


def lint(path: PathLike) -> List[Finding]:
    """``int8kit lint``: a Q/DQ model's findings against TensorRT's explicit-quantization rules."""
    return [Finding(**{k: str(v).lower() if k == "severity" else v for k, v in f.items()})
            for f in json.loads(_native.lint_json(os.fspath(path)))]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``int8kit`` command, run in this process."""
    from ._cli import main as cli_main

    return cli_main(argv)

