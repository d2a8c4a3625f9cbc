"""Reports of measured runs: the paper's claims with a verdict each, seaborn figures, Pareto fronts and
the paper's tables, as Markdown and a self-contained HTML page (``render``); two runs side by side
(``compare``); published accuracies with their sources (``load_accuracy``).

matplotlib is imported only by ``render`` (Agg backend), so importing this package needs only pandas.
"""

from .accuracy import load_accuracy
from .compare import compare
from .render import render

__all__ = ["compare", "load_accuracy", "render"]
