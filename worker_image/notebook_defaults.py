"""What libraries decide at import from the shell they find, set as in a notebook's kernel.

Why: a remote cell's output is shown in a notebook, so a library must format it as for a
notebook.  Some decide once, when imported, by asking whether the IPython shell is a
kernel's: pandas takes ``hasattr(get_ipython(), "kernel")`` (``config_init.is_terminal``)
and, finding none on the worker's shell, sets ``display.max_columns`` to 0, a terminal's
"as many as fit in 80 columns": ``print(df)`` of a wide frame showed 8 columns where a
local notebook shows 20, and its HTML table every column (all 2,000 of a wide frame) where
a notebook shows 20 (tester BK).  The shell cannot simply have a ``kernel``: code that
finds one uses it (ipywidgets 7 registers its comm target on ``kernel.comm_manager`` at
import, and fails there), so the notebook's defaults are set when the library is imported.

The hook is wrapt's post-import hook (``register_post_import_hook``, a meta path finder
that calls it once the module has been executed, or at once if it already was): it runs
before the importing cell's next line, so a cell that imports pandas and prints a frame
shows it as a notebook does.  A value the user set afterwards is theirs.
"""

from __future__ import annotations

import logging
import types

import wrapt

log = logging.getLogger(__name__)

# pandas' own default where it finds a kernel (``config_init``: 20, "cannot determine
# optimal number of columns"), and the terminal one it picks on the worker's shell.
PANDAS_NOTEBOOK_MAX_COLUMNS = 20
_PANDAS_TERMINAL_MAX_COLUMNS = 0


def _pandas_as_in_a_notebook(pandas: types.ModuleType) -> None:
    """``display.max_columns`` as pandas sets it in a kernel: its current value and the
    default ``pd.reset_option`` goes back to (a private table: left alone if its shape
    changed).  Never raises: a failure only leaves pandas as it found the shell."""
    key = "display.max_columns"
    try:
        if pandas.get_option(key) != _PANDAS_TERMINAL_MAX_COLUMNS:
            return  # a pandas that decides otherwise, or set already
        registered = getattr(pandas._config.config, "_registered_options", {})
        option = registered.get(key)
        if option is not None and hasattr(option, "_replace"):
            registered[key] = option._replace(defval=PANDAS_NOTEBOOK_MAX_COLUMNS)
        pandas.set_option(key, PANDAS_NOTEBOOK_MAX_COLUMNS)
    except Exception:  # an unknown pandas: its own choice stands
        log.info("could not set pandas' notebook display defaults", exc_info=True)


def install() -> None:
    """Register the hooks (once per executor, before any user code runs)."""
    wrapt.register_post_import_hook(_pandas_as_in_a_notebook, "pandas")
