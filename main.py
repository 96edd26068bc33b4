"""The one entry point: python main.py app:<experiment.yml> [--key value ...].

Thin on purpose: argv -> Config -> genutil.run.run(cfg). A UserError (bad config, data or
checkpoint) becomes one line on stderr and exit code 2; bugs keep their traceback.
"""

from __future__ import annotations

import sys

from genutil.config import config_help, load_config, parse_argv, run_title
from genutil.errors import UserError

USAGE = """usage: python main.py app:<experiment.yml> [--key value ...]

  --key v        override a key of the experiment file (int, float, else string)
  --key v1 v2    a list;  --flag sets True;  --noflag sets False
  --gpus 0 1     GPUs to use (DataParallel); the CPU when there is no GPU
  --data-dir D   root folder of the datasets

keys:
"""


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv``; return the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE + config_help())
        return 0
    try:
        app, overrides = parse_argv(argv)
        cfg = load_config(app or "", overrides)
        from genutil.log import setup_logging  # noqa: PLC0415
        from genutil.run import run  # noqa: PLC0415  (heavy imports after the config is valid)

        setup_logging()
        run(cfg, run_title(app, overrides))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
