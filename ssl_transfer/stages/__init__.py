"""Training stages: the contract (base.py), the SSL source stage and its control (source.py,
pretrain.py), the transfer stage (transfer.py)."""
