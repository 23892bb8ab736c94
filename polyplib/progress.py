"""Progress bars: widgets in JupyterLab, text where ``run_all.py`` executes the notebooks.

``tqdm.auto`` draws a widget bar in a Jupyter kernel (ipywidgets is a dependency) and a text bar
elsewhere. ``run_all.py`` sets ``POLYP_TEXT_PROGRESS=1`` for the kernels it starts: it forwards the
kernel's text output to the terminal as a live status line, which a widget never reaches.
"""
from __future__ import annotations

import os

#: Set (to anything but "" or "0") by run_all.py for the kernels it starts.
TEXT_PROGRESS = "POLYP_TEXT_PROGRESS"


def _tqdm_class():
    if os.environ.get(TEXT_PROGRESS, "") not in ("", "0"):
        from tqdm import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm


def tqdm(*args, **kwargs):
    """A tqdm bar of the kind this process should draw (see the module docstring)."""
    return _tqdm_class()(*args, **kwargs)
