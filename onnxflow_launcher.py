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
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
