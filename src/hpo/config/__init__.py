"""Loading and validating studies: YAML with line numbers -> StudyConfig + SearchSpace."""

from hpo.config.loader import Study, load_study
from hpo.config.study import StudyConfig
from hpo.config.trial import TrialConfig

__all__ = ["Study", "StudyConfig", "TrialConfig", "load_study"]
