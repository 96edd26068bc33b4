"""The one entry point: python main.py app:<experiment.yml> [--key value ...].

Thin on purpose: argv -> Config -> genutil.run.run(cfg). A UserError (bad config, data or
checkpoint) becomes one line on stderr and exit code 2; bugs keep their traceback. SIGINT or
SIGTERM during training: the run saves its position, prints how to resume, and exits 0.
Under torchrun only rank 0 prints (other ranks print only errors, marked with their rank).
"""

from __future__ import annotations

import os
import shlex
import sys

from genutil.config import config_help, load_config, parse_argv, run_title
from genutil.errors import UserError

USAGE = """usage: python main.py app:<experiment.yml> [--key value ...]

  --key v        override a key of the experiment file (int, float, else string)
  --key v1 v2    a list;  --flag sets True;  --noflag sets False
  --gpus 0 1     GPUs to use (DataParallel); the CPU when there is no GPU
  --data-dir D   root folder of the datasets
  --resume auto  continue this run from its last.pt (exactly where it stopped)

several processes (DistributedDataParallel; batch_size stays the global batch):
  torchrun --nproc_per_node N main.py app:<experiment.yml> [--key value ...]

keys:
"""


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def resume_command(argv: list[str]) -> str:
    """The command line that continues the run of ``argv``: the same, with ``--resume auto``."""
    kept, i = [], 0
    while i < len(argv):
        if argv[i] == "--resume":  # drop it and its value(s): the grammar's keys start with --
            i += 1
            while i < len(argv) and not (argv[i].startswith("--") and len(argv[i]) > 2):
                i += 1
            continue
        kept.append(argv[i])
        i += 1
    args = shlex.join([sys.argv[0] or "main.py", *kept, "--resume", "auto"])
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:
        local, world = os.environ["LOCAL_WORLD_SIZE"], os.environ["WORLD_SIZE"]
        launcher = (
            f"torchrun --nproc_per_node {local}"
            if local == world
            else "torchrun <the same torchrun options>"
        )
        return f"{launcher} {args}"
    return f"{shlex.quote(sys.executable)} {args}"


def _experiment_help(argv: list[str]) -> int:
    """``main.py app:<file> [--key value ...] --help``: that experiment's keys as resolved."""
    try:
        app, overrides = parse_argv(argv)
        cfg = load_config(app or "", overrides)
    except UserError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    print(
        f"keys of {app} with these overrides (run title {cfg.title or run_title(app, overrides)}):"
    )
    print(config_help(cfg))
    return 0


def _one_line(e: BaseException) -> str:
    """The error's message as one line. An error raised in a data-loading worker reaches us with
    the worker's traceback in its message: its last line is the message."""
    text = str(e).strip()
    if "Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


def _die_with_launcher() -> None:
    """Under torchrun: ask the kernel for SIGTERM when the launcher dies (Linux), so that a
    killed launcher never leaves its workers training; SIGTERM stops a run at the next step
    with its position saved (genutil.resume). If the launcher is already gone, stop now."""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes  # noqa: PLC0415
    import signal  # noqa: PLC0415

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv``; return the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE + config_help())
        return 0
    if argv[0].startswith("app:") and ("--help" in argv or "-h" in argv):
        return _experiment_help([a for a in argv if a not in ("--help", "-h")])
    rank = _rank()
    _die_with_launcher()
    try:
        app, overrides = parse_argv(argv)
        cfg = load_config(app or "", overrides)
        import logging  # noqa: PLC0415

        from genutil import process  # noqa: PLC0415  (heavy imports after the config is valid)
        from genutil.log import setup_logging  # noqa: PLC0415
        from genutil.run import run  # noqa: PLC0415

        setup_logging()
        if rank:
            logging.getLogger().setLevel(logging.WARNING)
        said = process.configure(cfg)  # the process-wide settings: here, once
        if rank == 0:
            print(said)
        run(
            cfg,
            cfg.title or run_title(app, overrides),
            print if rank == 0 else (lambda _: None),
            resume_command(argv),
            said=(said,),
        )
    except UserError as e:
        prefix = f"[rank {rank}] " if rank else ""
        print(f"{prefix}error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
