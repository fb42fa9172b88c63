"""The HTTP API keeps the contract its ``/openapi.json`` states (issue 25): Schemathesis generates requests from the
schema (valid and invalid), sends them to the real server on a small store, and runs all its checks - no 5xx, every
status and content type declared, every body matching its schema, valid data accepted and invalid data rejected,
405 with ``Allow`` for methods a path does not have. Bounded in examples; offline (a local server)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
from hypothesis import HealthCheck, settings  # noqa: E402

from helpers import PATIENCE, write_image  # noqa: E402

EXAMPLES = int(os.environ.get("IMGFEAT_API_EXAMPLES", "25"))  # per operation
# CI draws the same examples every run; IMGFEAT_API_EXAMPLES=N (a deeper search) draws new ones each time
DERANDOMIZE = "IMGFEAT_API_EXAMPLES" not in os.environ


@pytest.fixture(scope="module")
def contract_server(tmp_path_factory):
    """A 12-image store with labels, served on 127.0.0.1 with small limits."""
    from imgfeat.api import extract
    from imgfeat.serve.app import ServeConfig
    from imgfeat.serve.collection import Collection
    from imgfeat.serve.server import Background

    root = tmp_path_factory.mktemp("contract")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMGFEAT_CACHE", str(root / "cache"))
        mp.setenv("IMGFEAT_QUICK", "0")
        lines = []
        for i in range(12):
            path = write_image(root / "images" / f"{i:02d}.png", size=(48 + 4 * i, 40), seed=i // 2)
            lines.append(f"img{i:02d}\t{path}")
        (root / "list.tsv").write_text("\n".join(lines) + "\n")
        (root / "labels.tsv").write_text("".join(f"img{i:02d}\t{'ab'[i % 2]}\n" for i in range(12)))
        extract(str(root / "list.tsv"), str(root / "store"), quiet=True)
        collection = Collection(str(root / "store"), labels=str(root / "labels.tsv"), cache=root / "serve-cache")
        config = ServeConfig(port=0, max_upload=256 * 1024, max_json=16 * 1024, max_k=40)
        with Background(collection, config) as srv:
            srv.root = root
            yield srv


def _config():
    # a body over its declared maxLength is refused as HTTP says, 413 Content Too Large
    negative = {"negative_data_rejection": {"expected-statuses": ["400", "401", "403", "404", "405", "406", "409",
                                                                  "413", "415", "422", "428", "429", "5xx"]}}
    # a raw body is schema-valid as any bytes: random bytes are rarely an image, or a whole number of int32 rows,
    # so there (only) a 400 for a well-formed request is part of the contract (declared with its error body)
    raw = {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "404", "413"]}, **negative}
    # requests wait as long as any test here may (Schemathesis's own default is 10 s: the first upload, which builds
    # the store's model and starts the decode processes, takes longer than that on a loaded 2-core machine)
    return schemathesis.config.SchemathesisConfig.from_dict({"request-timeout": PATIENCE, "checks": negative,
                                                             "operations": [
        {"include-path": "/api/search/image", "checks": raw},
        {"include-path": "/api/rows", "checks": raw}]})


@pytest.fixture(scope="module")
def api_schema(contract_server):
    return schemathesis.openapi.from_url(contract_server.url + "openapi.json", config=_config())


@pytest.fixture(scope="module")
def review_server(tmp_path_factory):
    """A features file (no store: image search is not offered) with an audit report under review."""
    from test_audit import make_review

    from imgfeat.serve.app import ServeConfig
    from imgfeat.serve.collection import Collection
    from imgfeat.serve.server import Background

    root = tmp_path_factory.mktemp("review")
    review = make_review(root)
    collection = Collection(str(review["store"]), cache=root / "serve-cache")
    with Background(collection, ServeConfig(port=0, audit=str(review["report"]), max_json=16 * 1024)) as srv:
        yield srv


@pytest.fixture(scope="module")
def review_api_schema(review_server):
    return schemathesis.openapi.from_url(review_server.url + "openapi.json", config=_config())


schema = schemathesis.pytest.from_fixture("api_schema")
review_schema = schemathesis.pytest.from_fixture("review_api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    """Schemathesis 4.32's lazy (fixture) schema reads pytest's private ``node._nodeid``, which pytest 9.2's nodes
    no longer have; give it the public node id (it appends the operation to it for the report)."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.mark.timing
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE, suppress_health_check=list(HealthCheck))
def test_the_api_keeps_its_contract(case):
    case.call_and_validate(timeout=PATIENCE)


@pytest.mark.timing
@review_schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE, suppress_health_check=list(HealthCheck))
def test_the_review_api_keeps_its_contract(case):
    case.call_and_validate(timeout=PATIENCE)


def test_the_schema_declares_bodies_media_types_bounds_and_errors(contract_server):
    import requests

    spec = requests.get(contract_server.url + "openapi.json", timeout=PATIENCE).json()
    paths = spec["paths"]
    upload = paths["/api/search/image"]["post"]
    assert set(upload["requestBody"]["content"]) == {"image/*", "application/octet-stream"}
    assert upload["requestBody"]["content"]["image/*"]["schema"]["maxLength"] == 256 * 1024
    assert {"400", "404", "413", "415"} <= set(upload["responses"])
    assert set(paths["/api/rows"]["post"]["requestBody"]["content"]) == {"application/json",
                                                                         "application/octet-stream"}
    assert "image/jpeg" in paths["/thumb/{id}"]["get"]["responses"]["200"]["content"]
    assert "application/octet-stream" in paths["/api/map/xy.f32"]["get"]["responses"]["200"]["content"]
    assert "text/tab-separated-values" in paths["/api/duplicates.tsv"]["get"]["responses"]["200"]["content"]
    threshold = next(p for p in paths["/api/duplicates"]["get"]["parameters"] if p["name"] == "threshold")
    assert (threshold["schema"]["minimum"], threshold["schema"]["maximum"]) == (-1.0, 1.0)
    offset = next(p for p in paths["/api/neighbours/{id}"]["get"]["parameters"] if p["name"] == "offset")
    assert offset["schema"]["maximum"] == 39  # --max-k 40
    assert "202" in paths["/api/duplicates"]["get"]["responses"]
    every = [op for path in paths.values() for op in path.values()]
    assert not any("422" in op["responses"] for op in every)  # validation errors are 400s with the error body
    assert spec["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
    r = requests.request("TRACE", contract_server.url + "thumb/img00", timeout=PATIENCE)
    assert r.status_code == 405 and r.headers["Allow"] == "GET" and r.json()["error"]


def test_a_client_from_the_schema_uploads_an_image(api_schema, contract_server):
    """A generic OpenAPI client (Schemathesis builds the request from the schema's operation and media type and
    validates the answer against it) searches by an uploaded PNG: the nearest result is the image itself."""
    buf = io.BytesIO()
    Image.open(contract_server.root / "images" / "07.png").save(buf, "PNG")
    operation = api_schema["/api/search/image"]["POST"]
    case = operation.Case(body=buf.getvalue(), media_type="image/png", query={"k": 3, "label": "b"})
    response = case.call_and_validate(timeout=PATIENCE)
    hits = response.json()["results"]
    assert len(hits) == 3 and hits[0]["id"] == "img07" and hits[0]["score"] > 0.999
    assert {h["label"] for h in hits} == {"b"} and np.isfinite([h["score"] for h in hits]).all()


def test_a_token_server_declares_its_bearer_scheme_and_401(tmp_path):
    """With --token every route answers 401 without it: the schema says so, with the bearer scheme."""
    from test_audit import make_review

    from imgfeat.serve.app import ServeConfig, create_app
    from imgfeat.serve.collection import Collection

    review = make_review(tmp_path)
    collection = Collection(str(review["store"]), cache=tmp_path / "serve-cache")
    app = create_app(collection, ServeConfig(port=0, token="s3cret"))
    try:
        spec = app.openapi()
    finally:
        app.state.pool.close()
    assert spec["components"]["securitySchemes"]["token"] == {"type": "http", "scheme": "bearer",
                                                              "description": "imgfeat serve --token SECRET"}
    assert spec["security"] == [{"token": []}]
    operations = [op for path in spec["paths"].values() for op in path.values()]
    assert all({"400", "401"} <= set(op["responses"]) for op in operations)
