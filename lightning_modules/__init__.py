"""LightningModules, backbones and DataModules: plain torch + Lightning, usable on their own."""
