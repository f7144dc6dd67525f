"""The study and trial schemas, YAML with line numbers, and pydantic errors as ``file:line: field`` messages.

Loading a study (its search space and the cross-field checks) is :func:`hpo.study.load_study`.
"""

from hpo.config.study import StudyConfig
from hpo.config.trial import TrialConfig

__all__ = ["StudyConfig", "TrialConfig"]
