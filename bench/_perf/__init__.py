"""The parts of ``python -m bench perf`` (``bench/perf.py``: the command line and the order of
the sections): ``measure`` runs one measurement in a child process, ``suite`` starts those
children and the flow and reads their peak RSS, ``inputs`` prepares the frames and the model,
``experiments`` the settings tried one by one, ``report`` turns perf.json into Markdown. The
backend rows are ``bench._backends``."""
