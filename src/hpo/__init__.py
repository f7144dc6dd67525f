"""hpo: declarative hyperparameter search for image classification."""

__version__ = "0.1.0"

import warnings as _warnings

# torch 2.13 warns from inside its own deep copies of an export's tree spec (``LeafSpec`` is deprecated) in
# every torch.export, ONNX export and export reload: nothing a user can act on, printed into the middle of a
# run's summary. Only this message is silenced.
_warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
