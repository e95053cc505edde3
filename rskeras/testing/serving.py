"""A loopback stand-in for TF Serving: the PredictionService (gRPC) and the REST API,
backed by an exported SavedModel.

There is no TF Serving binary on development machines, so this module implements the
serving contract that clients rely on, in-process, to test exported models for real:

* gRPC: ``tensorflow.serving.PredictionService`` ``Predict`` and ``GetModelMetadata``
  with the ``tensorflow-serving-api`` protos (``PredictRequest.inputs`` / ``outputs`` as
  ``TensorProto``, ``model_spec.name`` / ``signature_name`` / ``version``,
  ``output_filter``);
* REST: ``POST /v1/models/<name>[/versions/<v>]:predict`` with the row format
  ``{"instances": [...]}`` -> ``{"predictions": [...]}`` or the columnar format
  ``{"inputs": {...}}`` -> ``{"outputs": {...}}`` (a single input / output may be given /
  returned bare), ``GET /v1/models/<name>`` (version status) and ``GET
  /v1/models/<name>/metadata``.

Servers bind to 127.0.0.1 by default. ``ServedModel`` loads a model base path with
numeric version folders (``models/<name>/<version>/saved_model.pb``, the highest version
is served, as TF Serving does) or a SavedModel directory.

Run locally: ``python -m rskeras.testing.serving --model_name NAME --model_base_path
models/NAME --rest_api_port 8501 --port 8500`` (TF Serving's flag names).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import threading
import urllib.error
import urllib.request
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
LOOPBACK = "127.0.0.1"


class ServingError(ValueError):
    """A request that cannot be served; ``code`` is the HTTP status (400 / 404)."""

    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.code = code


def resolve_version(base_path: str) -> tuple[str, int]:
    """(SavedModel directory, version) of a model base path (highest numeric version
    folder) or of a SavedModel directory itself (version 1)."""
    if os.path.exists(os.path.join(base_path, "saved_model.pb")):
        name = os.path.basename(os.path.normpath(base_path))
        return base_path, int(name) if name.isdigit() else 1
    entries = os.listdir(base_path) if os.path.isdir(base_path) else []
    versions = [int(d) for d in entries if d.isdigit() and os.path.exists(os.path.join(base_path, d, "saved_model.pb"))]
    if not versions:
        raise FileNotFoundError(f"{base_path}: no SavedModel and no numeric version folder with one (expected {base_path}/1/saved_model.pb)")
    version = max(versions)
    return os.path.join(base_path, str(version)), version


class ServedModel:
    """A loaded SavedModel answering predict requests.

    Args:
        path: model base path (numeric version folders) or SavedModel directory.
        name: model name in requests (default: the base path's folder name).
    """

    def __init__(self, path: str, name: str | None = None):
        self.path, self.version = resolve_version(path)
        base = path if os.path.normpath(self.path) != os.path.normpath(path) else os.path.dirname(os.path.normpath(path))
        self.name = name or os.path.basename(os.path.normpath(base)) or "model"
        self.loaded = tf.saved_model.load(self.path)
        self.signatures = dict(self.loaded.signatures)
        self._lock = threading.Lock()

    def input_specs(self, signature: str = DEFAULT_SIGNATURE) -> dict[str, tf.TensorSpec]:
        fn = self.signature(signature)
        return dict(fn.structured_input_signature[1])

    def output_specs(self, signature: str = DEFAULT_SIGNATURE) -> dict[str, tf.TensorSpec]:
        return dict(self.signature(signature).structured_outputs)

    def signature(self, name: str | None) -> Any:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise ServingError(f"signature {name!r} not found; the model has {sorted(self.signatures)}")
        return self.signatures[name]

    def predict(self, inputs: dict[str, Any], signature: str | None = None, output_filter: list[str] | None = None) -> dict[str, np.ndarray]:
        """Runs a signature on named batched inputs (cast to the signature dtypes)."""
        fn = self.signature(signature)
        specs = dict(fn.structured_input_signature[1])
        missing = sorted(set(specs) - set(inputs))
        extra = sorted(set(inputs) - set(specs))
        if missing or extra:
            raise ServingError(f"signature {signature or DEFAULT_SIGNATURE!r} takes inputs {sorted(specs)}, got {sorted(inputs)}")
        feed = {}
        for key, spec in specs.items():
            try:
                value = np.asarray(inputs[key], dtype=spec.dtype.as_numpy_dtype)
            except (TypeError, ValueError) as e:
                raise ServingError(f"input {key!r}: cannot convert to {spec.dtype.name}: {e}") from None
            if not spec.shape.is_compatible_with(value.shape):
                raise ServingError(f"input {key!r}: shape {list(value.shape)} does not match the signature {spec.shape.as_list()}")
            feed[key] = tf.constant(value)
        outputs = fn(**feed)
        names = list(outputs)
        if output_filter:
            unknown = sorted(set(output_filter) - set(names))
            if unknown:
                raise ServingError(f"output_filter names unknown outputs {unknown}; outputs are {sorted(names)}")
            names = [n for n in names if n in output_filter]
        return {k: outputs[k].numpy() for k in names}

    def signature_def_map(self) -> Any:
        """The SavedModel's ``SignatureDef`` protos (``SignatureDefMap``)."""
        from tensorflow.core.protobuf import saved_model_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2

        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(self.path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        result = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in proto.meta_graphs[0].signature_def.items():
            if not key.startswith("__"):
                result.signature_def[key].CopyFrom(sig)
        return result


# ---- gRPC --------------------------------------------------------------------------------


def _grpc_servicer_class():
    import grpc
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

    class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        """``PredictionService`` backed by a ``ServedModel`` (Predict, GetModelMetadata)."""

        def __init__(self, model: ServedModel):
            self.model = model

        def _check_spec(self, spec, context) -> None:
            if spec.name != self.model.name:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: model {spec.name!r} (serving {self.model.name!r})")
            if spec.HasField("version") and spec.version.value != self.model.version:
                message = f"model {spec.name!r} version {spec.version.value} not found (serving {self.model.version})"
                context.abort(grpc.StatusCode.NOT_FOUND, message)

        def Predict(self, request, context):  # noqa: N802 (gRPC method name)
            self._check_spec(request.model_spec, context)
            signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
            try:
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                outputs = self.model.predict(inputs, signature, list(request.output_filter))
            except ServingError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = self.model.name
            response.model_spec.version.value = self.model.version
            response.model_spec.signature_name = signature
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response

        def GetModelMetadata(self, request, context):  # noqa: N802
            self._check_spec(request.model_spec, context)
            if list(request.metadata_field) != ["signature_def"]:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "metadata_field must be ['signature_def']")
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = self.model.name
            response.model_spec.version.value = self.model.version
            response.metadata["signature_def"].Pack(self.model.signature_def_map())
            return response

    return PredictionServicer


def start_grpc_server(model: ServedModel, port: int = 0, host: str = LOOPBACK, max_workers: int = 4) -> tuple[Any, int]:
    """Starts a gRPC PredictionService for ``model``; returns ``(server, port)`` (port 0
    picks a free one). Stop it with ``server.stop(grace)``."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_grpc_servicer_class()(model), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"gRPC server could not bind {host}:{port}")
    server.start()
    return server, bound


def grpc_predict(
    address: str,
    model_name: str,
    inputs: dict[str, np.ndarray],
    signature_name: str = DEFAULT_SIGNATURE,
    timeout: float = 30.0,
    output_filter: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Client: a ``Predict`` call to ``address`` (``host:port``); returns numpy outputs."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
    request.output_filter.extend(output_filter or [])
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 256 << 20)]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=timeout)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


# ---- REST ---------------------------------------------------------------------------------

_PREDICT_PATH = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?:predict$")
_STATUS_PATH = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?(/metadata)?$")


def _stack_instances(instances: list[Any], specs: dict[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    """Row format -> batched inputs. Instances are dicts of named inputs, or bare values
    when the signature has one input."""
    if not isinstance(instances, list) or not instances:
        raise ServingError("'instances' must be a non-empty list")
    names = list(specs)
    columns: dict[str, list[Any]] = {n: [] for n in names}
    for i, instance in enumerate(instances):
        if isinstance(instance, dict):
            if sorted(instance) != sorted(names):
                raise ServingError(f"instance {i} has inputs {sorted(instance)}, the signature takes {sorted(names)}")
            for n in names:
                columns[n].append(instance[n])
        elif len(names) == 1:
            columns[names[0]].append(instance)
        else:
            raise ServingError(f"instance {i} must be an object with inputs {sorted(names)} (the signature takes several inputs)")
    try:
        return {n: np.asarray(v) for n, v in columns.items()}
    except ValueError as e:
        raise ServingError(f"instances have inconsistent shapes: {e}") from None


def _columnar_inputs(inputs: Any, specs: dict[str, tf.TensorSpec]) -> dict[str, Any]:
    if isinstance(inputs, dict):
        return inputs
    if len(specs) == 1:
        return {next(iter(specs)): inputs}
    raise ServingError(f"'inputs' must be an object with inputs {sorted(specs)}")


def rest_predict_body(model: ServedModel, body: dict[str, Any]) -> dict[str, Any]:
    """Answers a REST ``:predict`` JSON body (row or columnar format)."""
    if not isinstance(body, dict):
        raise ServingError("the request body must be a JSON object")
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows == has_columns:
        raise ServingError("the request must have exactly one of 'instances' (row format) and 'inputs' (columnar format)")
    signature = body.get("signature_name") or DEFAULT_SIGNATURE
    specs = model.input_specs(signature)
    if has_rows:
        outputs = model.predict(_stack_instances(body["instances"], specs), signature)
        batch = len(body["instances"])
        if len(outputs) == 1:
            return {"predictions": next(iter(outputs.values())).tolist()}
        return {"predictions": [{k: v[i].tolist() for k, v in outputs.items()} for i in range(batch)]}
    outputs = model.predict(_columnar_inputs(body["inputs"], specs), signature)
    if len(outputs) == 1:
        return {"outputs": next(iter(outputs.values())).tolist()}
    return {"outputs": {k: v.tolist() for k, v in outputs.items()}}


def _metadata_json(model: ServedModel) -> dict[str, Any]:
    signatures = {}
    for name in model.signatures:
        signatures[name] = {
            "inputs": {k: {"dtype": s.dtype.name, "shape": s.shape.as_list()} for k, s in model.input_specs(name).items()},
            "outputs": {k: {"dtype": s.dtype.name, "shape": s.shape.as_list()} for k, s in model.output_specs(name).items()},
        }
    return {"model_spec": {"name": model.name, "version": str(model.version)}, "metadata": {"signature_def": signatures}}


class _RestHandler(BaseHTTPRequestHandler):
    model: ServedModel  # set on the subclass made by start_rest_server
    server_version = "rskeras-serving"

    def log_message(self, format, *args):  # noqa: A002 (BaseHTTPRequestHandler API)
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _check_model(self, name: str, version: str | None) -> None:
        if name != self.model.name:
            raise ServingError(f"Servable not found for request: model {name!r} (serving {self.model.name!r})", 404)
        if version is not None and int(version) != self.model.version:
            raise ServingError(f"model {name!r} version {version} not found (serving {self.model.version})", 404)

    def do_GET(self):  # noqa: N802 (http.server API)
        match = _STATUS_PATH.match(self.path)
        try:
            if not match:
                raise ServingError(f"unknown path {self.path}", 404)
            self._check_model(match.group(1), match.group(2))
            if match.group(3):
                self._send(200, _metadata_json(self.model))
            else:
                status = {"version": str(self.model.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                self._send(200, {"model_version_status": [status]})
        except ServingError as e:
            self._send(e.code, {"error": str(e)})

    def do_POST(self):  # noqa: N802
        match = _PREDICT_PATH.match(self.path)
        try:
            if not match:
                raise ServingError(f"unknown path {self.path} (expected /v1/models/<name>[/versions/<v>]:predict)", 404)
            self._check_model(match.group(1), match.group(2))
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except json.JSONDecodeError as e:
                raise ServingError(f"malformed JSON: {e}") from None
            self._send(200, rest_predict_body(self.model, body))
        except ServingError as e:
            self._send(e.code, {"error": str(e)})
        except Exception as e:  # a model failure must not kill the server thread
            logger.exception("REST predict failed")
            self._send(500, {"error": f"{type(e).__name__}: {e}"})


def start_rest_server(model: ServedModel, port: int = 0, host: str = LOOPBACK) -> tuple[ThreadingHTTPServer, int]:
    """Starts the REST API for ``model`` in a daemon thread; returns ``(server, port)``.
    Stop it with ``server.shutdown(); server.server_close()``."""
    handler = type("RestHandler", (_RestHandler,), {"model": model})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="rskeras-rest", daemon=True)
    thread.start()
    return server, server.server_address[1]


def rest_request(url: str, payload: dict[str, Any] | None = None, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """Client: GET (``payload`` None) or POST JSON to ``url``; returns (status, JSON body)."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve an exported SavedModel over gRPC and REST on loopback (a TF Serving stand-in for development)."
    )
    parser.add_argument("--model_base_path", required=True, help="models/<name> with numeric version folders, or a SavedModel directory")
    parser.add_argument("--model_name", default=None, help="name in requests (default: the base path's folder name)")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500; 0 = off)")
    parser.add_argument("--rest_api_port", type=int, default=8501, help="REST port (default 8501; 0 = off)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    model = ServedModel(args.model_base_path, args.model_name)
    servers = []
    if args.port:
        grpc_server, port = start_grpc_server(model, args.port)
        servers.append(grpc_server)
        print(f"gRPC PredictionService for {model.name!r} v{model.version} on {LOOPBACK}:{port}")
    if args.rest_api_port:
        rest, port = start_rest_server(model, args.rest_api_port)
        print(f"REST API on http://{LOOPBACK}:{port}/v1/models/{model.name}:predict")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
