"""What happens around and after a search: warm start, re-check, the final retrain and registration,
the nightly summary. Each stage takes a study, the engine's results and a tracker."""
