"""hpo-embed library code: functions that take data (DataFrames, arrays, models, paths)
as arguments. The ``stages/`` scripts read params.yaml and the dvc.yaml paths and call it."""
