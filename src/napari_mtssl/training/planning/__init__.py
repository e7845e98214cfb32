"""Planning a run from its data and its machine: the fingerprint of the study
(``fingerprint``), the shape (``shape``: spacing, patch, network, batch, precision, with the
threads the machine leaves, ``machine``), the steps timed on the device (``timing``), the steps
each model gets within a budget (``planner``), and how many models train side by side
(``lanes``). ``plan`` is what a plan is: the one that is saved with a run and read back.

Nothing is imported here: ``planning.plan`` reads a saved plan without torch.
"""
