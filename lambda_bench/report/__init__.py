"""Reports of measured runs: seaborn figures, Pareto fronts and the paper's tables, as Markdown and a
self-contained HTML page (``render``); published accuracies with their sources (``load_accuracy``).

matplotlib is imported only by ``render`` (Agg backend), so importing this package needs only pandas.
"""

from .accuracy import load_accuracy
from .render import render

__all__ = ["load_accuracy", "render"]
