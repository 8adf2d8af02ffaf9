"""The train stage: the loss factory and datasets (``losses``), batch sampling (``sampling``),
the CPU precision choice (``precision``), monitoring (``monitor``), the model card (``card``),
the iterative hard-negative round (``iterative``) and the stage (``train``)."""
