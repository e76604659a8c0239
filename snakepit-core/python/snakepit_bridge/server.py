"""The gRPC face of a worker: maps snakepit.v1.Worker RPCs onto a Dispatcher."""
from __future__ import annotations

from concurrent import futures
from typing import Dict

import grpc

from ._proto import (
    SERVICE_NAME,
    CloseSessionRequest,
    DescribeRequest,
    DescribeResponse,
    ExecuteRequest,
    ExecuteResponse,
    HealthRequest,
    HealthResponse,
    InitSessionRequest,
    SessionAck,
    StreamChunk,
)
from .dispatch import Dispatcher


def _metadata(context) -> Dict[str, str]:
    return {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}


class WorkerServicer:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def execute(self, request, context):
        return self.dispatcher.execute(request, _metadata(context), context.time_remaining())

    def execute_stream(self, request, context):
        yield from self.dispatcher.execute_stream(
            request, _metadata(context), context.time_remaining(), context.is_active
        )

    def health(self, _request, _context):
        return self.dispatcher.health()

    def describe(self, _request, _context):
        return self.dispatcher.describe()

    def init_session(self, request, _context):
        return self.dispatcher.init_session(request.session_id, request.metadata_json)

    def close_session(self, request, _context):
        return self.dispatcher.close_session(request.session_id)


def _unary(fn, req_cls, resp_cls):
    return grpc.unary_unary_rpc_method_handler(
        fn, request_deserializer=req_cls.FromString, response_serializer=resp_cls.SerializeToString
    )


def build_server(dispatcher: Dispatcher, address: str, max_message_bytes: int, threads: int):
    """A started-ready (not yet started) grpc.Server bound to `address`."""
    servicer = WorkerServicer(dispatcher)
    handlers = {
        "Execute": _unary(servicer.execute, ExecuteRequest, ExecuteResponse),
        "ExecuteStream": grpc.unary_stream_rpc_method_handler(
            servicer.execute_stream,
            request_deserializer=ExecuteRequest.FromString,
            response_serializer=StreamChunk.SerializeToString,
        ),
        "Health": _unary(servicer.health, HealthRequest, HealthResponse),
        "Describe": _unary(servicer.describe, DescribeRequest, DescribeResponse),
        "InitSession": _unary(servicer.init_session, InitSessionRequest, SessionAck),
        "CloseSession": _unary(servicer.close_session, CloseSessionRequest, SessionAck),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="snakepit-rpc"),
        handlers=[grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot bind the worker's gRPC server to {address}")
    return server
