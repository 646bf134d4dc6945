"""Training stages (LightningModules): source (SimCLR) and transfer."""
