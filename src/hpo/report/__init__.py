"""Plots for the final evaluation."""

from hpo.report.plots import confusion_matrix_png, learning_curves_png

__all__ = ["confusion_matrix_png", "learning_curves_png"]
