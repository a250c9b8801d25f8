"""Finding 6: rollback by file when a key's deployment name differs from its registered
name. The model reader finds every deployment that ever pointed at a blob's key by the
key itself (``Registry.deployments_of``), so an old blob is refused whatever names were
used."""
from __future__ import annotations

import pytest

import chain
from dataflows.segment import build_flow
from tests.flow_fixtures import env_for, make_blob, make_folder
from operators.config import load_config
from operators.model_reader import ModelRefused


def test_an_old_blob_deployed_under_another_name_than_it_was_registered_is_refused(tmp_path):
    reg = chain.connect(chain="embedded", home=tmp_path / "home")
    blob_a, blob_b = tmp_path / "models" / "a.vsb", tmp_path / "models" / "b.vsb"
    key_a, key_b = make_blob(blob_a, shift=0), make_blob(blob_b, shift=1)
    reg.register(key_a, "name-A", blob_a.as_uri())    # registered as "name-A" ...
    reg.register(key_b, "name-A", blob_b.as_uri())
    reg.deploy("name-B", key_a)                        # ... deployed as "name-B"
    folder = make_folder(tmp_path / "f", n=3)
    build_flow(load_config(env_for(tmp_path, f"dir:{folder}", blob_a)), registry=reg)
    reg.deploy("name-B", key_b)                        # A superseded under name-B
    with pytest.raises(ModelRefused, match="superseded: deployment 'name-B' is at v2.*no rollback"):
        build_flow(load_config(env_for(tmp_path, f"dir:{folder}", blob_a)), registry=reg)
    # the current blob still starts, following name-B
    build_flow(load_config(env_for(tmp_path, f"dir:{folder}", blob_b)), registry=reg)
