"""The parts of ``python -m bench soak`` (``bench/soak.py``: the command line and the report):
``flow`` is what runs in the flow's process, ``chain_control`` the chain the script owns and the
keys it deploys, ``samples`` what it samples of the running flow, ``run`` the timeline of one
soak, ``checks`` what its outputs must show."""
