"""BNP Inspector engine: find and prune backdoor neurons (EP, BNP, CLP). Never imports Qt."""
