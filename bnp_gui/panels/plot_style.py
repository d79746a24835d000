"""Colours of pyqtgraph plots from the Qt palette, so plots follow the system light/dark theme."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication


def palette_colors() -> tuple[QColor, QColor]:
    """(foreground, background) of the application's current palette."""
    palette = QApplication.palette()
    return palette.color(QPalette.Text), palette.color(QPalette.Base)


def style_plot(plot: pg.PlotWidget, foreground: QColor, background: QColor) -> None:
    """Background, axes, axis labels, title and legend of one plot widget."""
    plot.setBackground(background)
    item = plot.getPlotItem()
    for name in ("left", "bottom", "right", "top"):
        style_axis(item.getAxis(name), foreground)
    item.titleLabel.setAttr("color", foreground.name())
    item.titleLabel.setText(item.titleLabel.text)
    legend = item.legend
    if legend is not None:
        legend.setLabelTextColor(foreground)
        for _, label in legend.items:
            label.setAttr("color", foreground.name())
            label.setText(label.text)


def style_axis(axis: pg.AxisItem, foreground: QColor) -> None:
    axis.enableAutoSIPrefix(False)  # "(x0.001)" for scores around 0.2 reads as an error
    axis.setPen(foreground)
    axis.setTextPen(foreground)
    axis.labelStyle = {**axis.labelStyle, "color": foreground.name()}
    axis._updateLabel()
