"""Models: the architectures registry and detection from a state_dict, the libraries' models, the
analyst's own model code, weight sets, the methods' names and prune masks, the neuron graph, and
our model definitions (`nets`). Imports `errors`, `safety` and `data` only.
"""
