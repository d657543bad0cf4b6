"""Batches from Python objects, as the native module takes them: each batch a tuple ``(arrays, labels)``,
each array ``(name, dtype, shape, address, nbytes, array)`` of a C-contiguous, native-endian numpy array
(the tuple keeps it alive while int8kit copies it into its queue)."""

from __future__ import annotations

import heapq
import itertools
import os
from typing import Any, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]


def is_folder(data: Any) -> bool:
    """A folder path (str or PathLike) rather than an iterable of batches; a path that is not a folder is
    left to the command line, which names it in its error."""
    return isinstance(data, (str, os.PathLike))


def as_numpy(value: Any, where: str) -> np.ndarray:
    """A numpy view of an array-like: numpy arrays as they are, ``__dlpack__`` objects (torch, JAX, ...)
    through DLPack, anything else through ``__array__``; copied only when not C-contiguous or not
    native-endian."""
    if isinstance(value, np.ndarray):
        array = value
    elif hasattr(value, "__dlpack__"):
        try:
            array = np.from_dlpack(value)
        except (RuntimeError, TypeError, BufferError) as e:
            from ._native import InputError

            raise InputError(
                f"{where}: cannot read this {type(value).__name__} on the CPU ({e}); move it there first "
                "(torch: .cpu())"
            ) from None
    else:
        array = np.asarray(value)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array)


def _arrays(inputs: Any, where: str) -> List[Tuple[str, str, Tuple[int, ...], int, int, np.ndarray]]:
    if isinstance(inputs, dict):
        items = list(inputs.items())
    else:
        items = [("", inputs)]  # one unnamed array: the model's only input (the native side names it)
    out = []
    for name, value in items:
        a = as_numpy(value, f"{where}, '{name}'" if name else where)
        if a.ndim == 0:
            from ._native import InputError

            raise InputError(f"{where}: a scalar; every array needs the batch axis first")
        out.append((str(name), a.dtype.name, tuple(int(d) for d in a.shape), a.__array_interface__["data"][0],
                    int(a.nbytes), a))
    return out


def normalized(item: Any, index: int, labelled: bool) -> Tuple[list, Optional[np.ndarray]]:
    """One user batch as the native module takes it."""
    where = f"batch {index}"
    labels = None
    if isinstance(item, tuple) and len(item) == 2 and labelled:
        item, labels = item
        labels = as_numpy(labels, f"{where}, labels").astype(np.int64).reshape(-1)
    return _arrays(item, where), labels


def counted_batches(data: Iterable[Any], labelled: bool = False) -> Tuple[Iterator[tuple], Optional[int]]:
    """The normalized batches of ``data`` and, when ``data`` has a length, the samples expected (its length
    in batches times the first batch's size: exact when the batches are of one size)."""
    try:
        batches = len(data)  # type: ignore[arg-type]
    except TypeError:
        batches = None
    it = (normalized(item, i, labelled) for i, item in enumerate(data))
    if batches is None:
        return it, None
    first = next(it, None)
    if first is None:
        return iter(()), 0
    size = first[0][0][2][0] if first[0] and first[0][0][2] else 0
    return itertools.chain([first], it), batches * size


def spill(data: Iterable[Any], folder: str, labelled: bool, inputs: List[str]) -> str:
    """Writes an iterable's samples into ``folder`` as ``.npz`` files, one per sample (labelled: into class
    folders ``<label>-<label>``, as the command line reads labelled folders), and returns the folder. For
    commands that read their samples once per model (validate, sensitivity, autoprecision)."""
    os.makedirs(folder, exist_ok=False)
    sample = 0
    for index, item in enumerate(data):
        arrays, labels = normalized(item, index, labelled)
        n = arrays[0][2][0] if arrays and arrays[0][2] else 0
        if labels is not None and len(labels) != n:
            from ._native import InputError

            raise InputError(f"batch {index}: {len(labels)} labels for {n} samples")
        for i in range(n):
            target = folder
            if labels is not None:
                target = os.path.join(folder, f"{int(labels[i])}-{int(labels[i])}")
                os.makedirs(target, exist_ok=True)
            named = {(name or _only(inputs, index)): a[i : i + 1] for name, _, _, _, _, a in arrays}
            np.savez(os.path.join(target, f"{sample:08d}.npz"), **named)
            sample += 1
    return folder


def _only(inputs: List[str], index: int) -> str:
    if len(inputs) != 1:
        from ._native import InputError

        raise InputError(
            f"batch {index}: a bare array, but the model has {len(inputs)} inputs ({', '.join(inputs)}): give a "
            "dict {input_name: array}"
        )
    return inputs[0]


class HeldBack:
    """The samples of a stream kept out of the statistics to measure on, chosen as the command line chooses
    them from a folder: the ``hold_out_count`` samples of lowest ``hold_out_priority`` (seeded, by position),
    so a folder and an iterable of the same samples in the same order hold back the same ones. The stream's
    length is known only at its end, so the lowest priorities seen so far (at most the most any length can
    hold back) wait in memory; a sample pushed out by a lower one goes on to the statistics at once, and at
    the end those beyond the count for the stream's length follow."""

    def __init__(self, seed: int = 0, hold_out: Optional[int] = None) -> None:
        from . import _native

        self._native = _native
        self.seed, self.hold_out = seed, hold_out
        # A tenth of a long stream is capped (64); an explicit count is the count.
        self.most = hold_out if hold_out is not None else _native.hold_out_count(1 << 40)
        # The lowest (priority, position) seen so far, as a max-heap: (-priority, -position, sample).
        self.waiting: List[Tuple[int, int, dict]] = []
        self.samples: List[dict] = []
        self.seen = 0

    def split(self, inputs: Any) -> Any:
        """The batch's samples that go on to the statistics now (possibly with earlier ones pushed out)."""
        named = inputs if isinstance(inputs, dict) else {"": inputs}
        arrays = {k: as_numpy(v, f"sample {self.seen}") for k, v in named.items()}
        n = next(iter(arrays.values())).shape[0] if arrays else 0
        passed: List[int] = []
        pushed_out: List[dict] = []
        for i in range(n):
            position = self.seen + i
            key = (-self._native.hold_out_priority(self.seed, position), -position)
            if len(self.waiting) < self.most:
                heapq.heappush(self.waiting, (*key, {k: a[i : i + 1].copy() for k, a in arrays.items()}))
            elif key > self.waiting[0][:2]:
                sample = {k: a[i : i + 1].copy() for k, a in arrays.items()}
                pushed_out.append(heapq.heapreplace(self.waiting, (*key, sample))[2])
            else:
                passed.append(i)
        self.seen += n
        if len(passed) == n:
            return inputs
        rest = {k: a[passed] for k, a in arrays.items()} if passed else None
        return self._batch(([rest] if rest is not None else []) + pushed_out)

    def finish(self) -> Any:
        """At the end of the stream: keeps the count its length holds back, returns the rest as one batch."""
        count = self._native.hold_out_count(self.seen, self.hold_out)
        ranked = sorted(self.waiting, key=lambda e: (-e[0], -e[1]))
        kept, released = ranked[:count], ranked[count:]
        # The held-back samples in stream order, as a folder run lists its slice.
        self.samples = [sample for _, _, sample in sorted(kept, key=lambda e: -e[1])]
        self.waiting = []
        return self._batch([sample for _, _, sample in released])

    @staticmethod
    def _batch(samples: List[dict]) -> Any:
        """Sample groups (each a dict of arrays with the batch axis) as one batch: a dict by input name, or the
        bare array they came as."""
        if not samples:
            return None
        joined = {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}
        return joined[""] if list(joined) == [""] else joined

    def stream(self, data: Iterable[Any]) -> Iterator[Any]:
        """``data`` with the held-back samples taken out (samples from a batch may come later)."""
        for item in data:
            rest = self.split(item)
            if rest is not None:
                yield rest
        rest = self.finish()
        if rest is not None:
            yield rest

    def write(self, folder: str, inputs: List[str]) -> Optional[str]:
        """The held-back samples as ``.npz`` files in ``folder`` (None when there are none)."""
        if not self.samples:
            return None
        os.makedirs(folder, exist_ok=False)
        for i, sample in enumerate(self.samples):
            np.savez(os.path.join(folder, f"{i:08d}.npz"), **{(k or _only(inputs, i)): v for k, v in sample.items()})
        return folder
