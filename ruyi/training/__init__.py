"""Fine-tuning Ruyi with Lightning (LoRA through peft, or full) beside inference, not inside it.

Importing this package stays light: lightning and peft load only when a training run starts
(``pip install "ruyi[train]"``). Entry point: ``scripts/train.py`` -> :func:`ruyi.training.run.run`.
"""
