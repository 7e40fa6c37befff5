"""pytest defaults for a plain `pytest` run: notebooks in the smoke profile, no windows.

Environment variables set here reach the notebook kernels that nbval starts.
"""

import os

os.environ.setdefault("TL_COURSE_PROFILE", "smoke")
os.environ.setdefault("MPLBACKEND", "Agg")
