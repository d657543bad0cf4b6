"""The wheel's ``int8kit`` command: the command line, run in this process by the native module."""

from __future__ import annotations

import signal
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    import int8kit  # sets the ONNX Runtime library first
    from int8kit import _native

    # Ctrl-C ends the command as it ends the binary; inside Python the native module's waiting loop sees it,
    # stops the run at its next batch, and nothing half-written is left.
    argv = ["int8kit", *(sys.argv[1:] if argv is None else argv)]
    try:
        code, error = _native.run_cli(argv)
    except KeyboardInterrupt:
        print("int8kit: interrupted; nothing was written", file=sys.stderr)
        return 128 + signal.SIGINT
    if error:
        print(f"error: {error}", file=sys.stderr)
    del int8kit
    return code


if __name__ == "__main__":
    sys.exit(main())
