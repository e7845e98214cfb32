"""Planning a run from its data and its machine: the fingerprint of the study, the shape
(spacing, patch, network, batch, precision), the steps each model gets within a budget, and how
many models train side by side.

Nothing is imported here: ``planning.plan`` reads a saved plan without torch.
"""
