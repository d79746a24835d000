"""The window's panels: heatmap, distribution, neuron, thresholds, preview."""
