"""The HPO: its source file (``source``), the OBO checks (``obo``), the parse_hpo tables
(``tables``) and the one is-a graph everything walks (``graph``)."""
