"""Console entry point of `onnxflow`: imports the CLI under a Ctrl-C guard.

Importing onnx and onnxruntime takes a moment; an interrupt during it must end the process
as quietly as one during a run (one line, exit 130), not with a traceback.
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from onnxflow.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except ImportError as e:  # onnxruntime turns Ctrl-C during its import into ImportError
        if _interrupted(e):
            sys.stderr.write("error: interrupted\n")
            return 130
        sys.stderr.write(f"error: cannot import onnxflow's dependencies: {e}\n")
        return 2
    return cli_main()


def _interrupted(e: BaseException | None) -> bool:
    """Whether a KeyboardInterrupt is in the exception's chain of causes."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
