"""The run's log: every run folder gets a ``train.log`` with what actsparse, Lightning and Python's
warnings said during the run, and any error with its traceback (the console gets one line)."""

from __future__ import annotations

import logging
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOG_FILE = "train.log"
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"

log = logging.getLogger(__name__)


def _file_handler_for(path: Path) -> logging.FileHandler | None:
    target = path.resolve()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve() == target:
            return handler
    return None


@contextmanager
def run_log(out_dir: Path) -> Iterator[logging.Handler]:
    """Send the run's log lines (actsparse, Lightning, warnings) and any error to
    ``<out_dir>/train.log`` for the duration of the block.

    Under the CLI Hydra's job logging already writes that file (the handler is reused); nested
    runs (a study's runs in subfolders) and in-process calls get their own handler.
    """
    path = out_dir / LOG_FILE
    handler = _file_handler_for(path)
    attached: list[tuple[logging.Logger, logging.Handler]] = []
    own = handler is None
    if own:
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.setLevel(logging.INFO)
        attached.append((logging.getLogger(), handler))
    # Lightning's loggers do not propagate to the root: give them the file directly.
    for name in ("lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        if not lg.propagate and handler not in lg.handlers:
            attached.append((lg, handler))
    for lg, h in attached:
        lg.addHandler(h)
    ours = logging.getLogger("actsparse")
    old_level = ours.level
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)
    capture_before = getattr(logging, "_warnings_showwarning", None)
    logging.captureWarnings(True)
    try:
        yield handler
    except BaseException as err:
        log_error(err, [handler])
        raise
    finally:
        if capture_before is None:
            logging.captureWarnings(False)
        ours.setLevel(old_level)
        for lg, h in attached:
            lg.removeHandler(h)
        if own:
            handler.close()


# The files an error was already written to (nested run_log blocks and the CLI see the same error).
_LOGGED_TO = "actsparse_logged_to"


def log_error(err: BaseException, handlers: list[logging.Handler]) -> None:
    """Write the error with its traceback to the run's log files only (the console gets the
    one-line message or Hydra's report), once per file."""
    done: set[str] = getattr(err, _LOGGED_TO, set())
    record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, "Run failed: %s: %s",
                               (type(err).__name__, err), None)
    record.exc_text = "".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip()
    for handler in handlers:
        name = getattr(handler, "baseFilename", None)
        if name and name not in done:
            handler.handle(record)
            done.add(name)
    try:
        setattr(err, _LOGGED_TO, done)
    except AttributeError:
        pass


def log_files() -> list[logging.Handler]:
    """The root logger's file handlers (under the CLI: Hydra's ``train.log`` of the run)."""
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
