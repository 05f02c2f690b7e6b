"""What a checkpoint folder holds besides the model (``save_pretrained`` files): the training state
a resumed run restores and the metrics of the round that wrote it, with the run's whole history.
The file names live here so that the search (pruning, summaries), tracking (what a logged model
leaves out) and the loop (what it writes) share them without importing each other.
"""

from __future__ import annotations

STATE_FILE = "raykd_train_state.pt"  # optimizer, scheduler, step, round, history (torch.save)
META_FILE = "raykd_metrics.json"  # the round's reported metrics + "history": every round so far

NOT_MODEL_FILES = (STATE_FILE,)  # what a logged or copied model leaves out
