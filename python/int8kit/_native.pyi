"""Type stubs of the native module (python/src/lib.rs); use the functions of `int8kit` instead."""

from typing import Iterator, List, Optional, Tuple

__version__: str

class Int8kitError(Exception):
    """Base class of int8kit's errors."""

class InputError(Int8kitError):
    """Bad input or a run error: what the command line exits 2 on, with its message."""

def run_cli(argv: List[str]) -> Tuple[int, Optional[str]]:
    """Runs `int8kit ARGS...` in this process: (exit status, the error text for status 2)."""

def validate_iter(
    argv: List[str], batches: Iterator[tuple], total: Optional[int], labelled: bool
) -> Tuple[int, Optional[str]]:
    """Runs `int8kit validate ARGS...` on evaluation samples pulled from normalized batches (`--val` only
    names them): (exit status, the error text for status 2)."""

def calibrate_iter(
    model: str,
    batches: Iterator[tuple],
    recipe: Optional[str],
    name: str,
    total: Optional[int],
    threads: int,
    tensors: str,
    device: str,
    quiet: bool,
    seed: int = 0,
    smooth: str = "auto",
) -> bytes:
    """Calibrates over normalized batches; the .hist bytes."""

def read_hist(path: str) -> bytes:
    """Reads and checks a .hist file."""

def write_hist(hist: bytes, path: str) -> None:
    """Writes .hist bytes atomically, checked first."""

def merge_hists(parts: List[bytes]) -> bytes:
    """Merges the .hist bytes of every shard of one calibration."""

def lint_json(path: str) -> str:
    """The lint findings of a Q/DQ model, as JSON."""

def preprocess(paths: List[str], recipe: str, size: Optional[Tuple[int, int]] = None) -> Tuple[bytes, List[int]]:
    """The float32 batch a recipe (TOML) makes of these image files at ``size`` (needed when the recipe lists
    several sizes): (little-endian bytes, shape)."""

def preset_recipe(name: str) -> str:
    """A preset recipe's TOML."""

def input_names(model: str) -> List[str]:
    """The names of the inputs a model is fed."""

def hold_out_priority(seed: int, index: int) -> int:
    """The hold-out priority of the sample at ``index`` under ``seed``: the lowest are held back."""

def hold_out_count(samples: int, hold_out: Optional[int] = None) -> int:
    """How many of ``samples`` a run holds back (``None``: a tenth, 2 to 64, none below 20)."""
