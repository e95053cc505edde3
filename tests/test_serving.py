"""The TF Serving contract of exported SavedModels, for real: a gRPC PredictionService and
the REST :predict API served on loopback by rskeras.testing.serving, called with the
tensorflow-serving-api stub and plain HTTP."""

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from export_helpers import examples, tiny_exportable
from rskeras.export.saved_model import export_for_serving
from rskeras.testing.serving import ServedModel, grpc_predict, rest_request, start_grpc_server, start_rest_server

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "tiny"
    exportable = tiny_exportable("classification")
    export_for_serving(exportable, str(base / "1"))  # TF Serving layout: <base>/<version>
    model = ServedModel(str(base))
    grpc_server, grpc_port = start_grpc_server(model)
    rest_server, rest_port = start_rest_server(model)
    raw = examples(3)
    yield {
        "model": model,
        "grpc": f"127.0.0.1:{grpc_port}",
        "rest": f"http://127.0.0.1:{rest_port}",
        "raw": raw,
        "refs": [exportable.pipeline_outputs(e) for e in raw],
    }
    rest_server.shutdown()
    rest_server.server_close()
    grpc_server.stop(grace=None).wait(TIMEOUT)


def batch(served):
    return np.concatenate([e["image"] for e in served["raw"]])


def check_against_refs(served, probabilities, class_ids):
    for i, ref in enumerate(served["refs"]):
        np.testing.assert_allclose(np.asarray(probabilities[i]), ref["probabilities"][0], atol=1e-5)
        assert int(class_ids[i]) == int(ref["class_ids"][0])


def test_model_version_and_name(served):
    model = served["model"]
    assert (model.name, model.version) == ("tiny", 1)
    assert sorted(model.signatures) == ["raw_outputs", "serving_default"]


def test_grpc_predict_round_trip(served):
    out = grpc_predict(served["grpc"], "tiny", {"image": batch(served)}, timeout=TIMEOUT)
    assert set(out) == {"probabilities", "class_ids"}
    assert out["class_ids"].dtype == np.int32 and out["probabilities"].shape == (3, 3)
    check_against_refs(served, out["probabilities"], out["class_ids"])
    filtered = grpc_predict(served["grpc"], "tiny", {"image": batch(served)}, timeout=TIMEOUT, output_filter=["class_ids"])
    assert set(filtered) == {"class_ids"}
    raw = grpc_predict(served["grpc"], "tiny", {"image": batch(served)}, signature_name="raw_outputs", timeout=TIMEOUT)
    np.testing.assert_allclose(raw["outputs"], out["probabilities"], atol=1e-6)


def test_grpc_stub_errors_and_metadata(served):
    with grpc.insecure_channel(served["grpc"]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "tiny"
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(batch(served)[:1]))
        response = stub.Predict(request, timeout=TIMEOUT)
        assert response.model_spec.version.value == 1 and response.model_spec.signature_name == "serving_default"
        assert tf.make_ndarray(response.outputs["class_ids"]).shape == (1,)

        request.model_spec.name = "other"
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

        request.model_spec.name = "tiny"
        request.inputs["extra"].CopyFrom(tf.make_tensor_proto(np.zeros(1, np.float32)))
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "takes inputs ['image']" in info.value.details()

        meta_request = get_model_metadata_pb2.GetModelMetadataRequest()
        meta_request.model_spec.name = "tiny"
        meta_request.metadata_field.append("signature_def")
        meta = stub.GetModelMetadata(meta_request, timeout=TIMEOUT)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        meta.metadata["signature_def"].Unpack(signatures)
        serving = signatures.signature_def["serving_default"]
        assert set(serving.inputs) == {"image"} and set(serving.outputs) == {"probabilities", "class_ids"}
        assert [d.size for d in serving.inputs["image"].tensor_shape.dim] == [-1, -1, -1, 4]


def test_rest_row_format(served):
    url = served["rest"] + "/v1/models/tiny:predict"
    instances = [{"image": e["image"][0].tolist()} for e in served["raw"]]
    status, body = rest_request(url, {"instances": instances}, timeout=TIMEOUT)
    assert status == 200, body
    predictions = body["predictions"]
    assert len(predictions) == 3 and set(predictions[0]) == {"probabilities", "class_ids"}
    check_against_refs(served, [p["probabilities"] for p in predictions], [p["class_ids"] for p in predictions])
    # One input: instances may be the bare values; one output: predictions are bare too.
    status, body = rest_request(served["rest"] + "/v1/models/tiny/versions/1:predict", {"signature_name": "raw_outputs", "instances": [e["image"][0].tolist() for e in served["raw"]]}, timeout=TIMEOUT)
    assert status == 200, body
    check_against_refs(served, body["predictions"], [np.argmax(p) for p in body["predictions"]])


def test_rest_columnar_format(served):
    status, body = rest_request(served["rest"] + "/v1/models/tiny:predict", {"inputs": {"image": batch(served).tolist()}}, timeout=TIMEOUT)
    assert status == 200, body
    outputs = body["outputs"]
    assert set(outputs) == {"probabilities", "class_ids"}
    check_against_refs(served, outputs["probabilities"], outputs["class_ids"])


def test_rest_status_metadata_and_errors(served):
    status, body = rest_request(served["rest"] + "/v1/models/tiny", timeout=TIMEOUT)
    assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    status, body = rest_request(served["rest"] + "/v1/models/tiny/metadata", timeout=TIMEOUT)
    serving = body["metadata"]["signature_def"]["serving_default"]
    assert serving["inputs"]["image"] == {"dtype": "float32", "shape": [None, None, None, 4]}
    assert set(serving["outputs"]) == {"probabilities", "class_ids"}
    image = served["raw"][0]["image"][0].tolist()
    cases = [
        ("/v1/models/nope:predict", {"instances": [image]}, 404, "not found"),
        ("/v1/models/tiny/versions/2:predict", {"instances": [image]}, 404, "version 2"),
        ("/v1/models/tiny:predict", {"instances": [image], "inputs": {"image": [image]}}, 400, "exactly one of"),
        ("/v1/models/tiny:predict", {"instances": [{"img": image}]}, 400, "takes ['image']"),
        ("/v1/models/tiny:predict", {"inputs": {"image": [[1.0, 2.0]]}}, 400, "does not match the signature"),
        ("/v1/models/tiny:predict", {"signature_name": "x", "instances": [image]}, 400, "signature 'x' not found"),
    ]
    for path, payload, code, text in cases:
        status, body = rest_request(served["rest"] + path, payload, timeout=TIMEOUT)
        assert status == code and text in body["error"], (path, status, body)


def raw_http(url: str, head: str, body: bytes = b"") -> tuple[int, dict]:
    """Sends a hand-written HTTP request (headers a client library would not send)."""
    import json
    import socket
    from urllib.parse import urlparse

    where = urlparse(url)
    with socket.create_connection((where.hostname, where.port), timeout=TIMEOUT) as conn:
        conn.sendall(head.encode() + b"\r\n\r\n" + body)
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1] or b"{}")


def test_rest_hostile_requests(served, caplog):
    """Issue 13: Content-Length -1 (hung before), 100000-deep JSON (HTTP 500 RecursionError
    before), NaN / Infinity literals (accepted silently before: now a warning with the count)."""
    url = served["rest"] + "/v1/models/tiny:predict"
    for length in ("-1", "abc"):
        status, body = raw_http(url, f"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {length}", b"{}")
        assert status == 400 and "invalid Content-Length" in body["error"], body
    status, body = raw_http(url, "POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x", b"{}")
    assert status == 411 and "no Content-Length" in body["error"], body
    deep = b"[" * 100000 + b"]" * 100000
    status, body = raw_http(url, f"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(deep)}", deep)
    assert status == 400 and "nested too deeply" in body["error"], body
    status, body = raw_http(url, "POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 8", b"{\"instan")
    assert status == 400 and "malformed JSON" in body["error"], body
    status, body = raw_http(url, "POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100", b"{}")
    assert status == 400 and "ended after 2 of its 100 bytes" in body["error"], body
    image = served["raw"][0]["image"][0].tolist()
    image[0][0] = [float("nan"), float("inf"), 0.0, 0.0]
    with caplog.at_level("WARNING", logger="rskeras.testing.serving"):
        status, body = rest_request(url, {"instances": [image]}, timeout=TIMEOUT)  # json.dumps writes NaN / Infinity
    assert status == 200, body
    assert "2 non-finite value(s)" in caplog.text and "NaN: 1" in caplog.text, caplog.text


def test_grpc_malformed_tensor_proto(served):
    """Issue 13: a malformed TensorProto is INVALID_ARGUMENT naming the input, not a crash."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    def proto(dtype, dims, content=b""):
        shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])
        return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, tensor_content=content)

    cases = [
        (proto(types_pb2.DT_FLOAT, [1, 8, 8, 4], b"\0" * 7), "tensor_content has 7 bytes"),
        (proto(types_pb2.DT_FLOAT, [-1, 8, 8, 4]), "not fully defined"),
        (proto(types_pb2.DT_INVALID, [1]), "no dtype"),
        (proto(types_pb2.DT_FLOAT, [1 << 20, 1 << 20, 4]), "more than"),
    ]
    with grpc.insecure_channel(served["grpc"]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for tensor, text in cases:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "tiny"
            request.inputs["image"].CopyFrom(tensor)
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(request, timeout=TIMEOUT)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
            assert "input 'image'" in info.value.details() and text in info.value.details(), info.value.details()
