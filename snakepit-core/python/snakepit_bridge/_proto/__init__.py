"""Message classes of the worker contract (proto/snakepit/v1/worker.proto).

Built at import time from the embedded descriptor in a private descriptor pool, so
they never clash with user code that loads protobuf files of its own.
"""
from google.protobuf import descriptor_pool, message_factory

from .worker_descriptor import SERIALIZED_FILE

SERVICE_NAME = "snakepit.v1.Worker"

_pool = descriptor_pool.DescriptorPool()
_pool.AddSerializedFile(SERIALIZED_FILE)


def _message(name: str):
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"snakepit.v1.{name}"))


ExecuteRequest = _message("ExecuteRequest")
ExecuteResponse = _message("ExecuteResponse")
WorkerSpan = _message("WorkerSpan")
StreamChunk = _message("StreamChunk")
WorkerError = _message("WorkerError")
HealthRequest = _message("HealthRequest")
HealthResponse = _message("HealthResponse")
DescribeRequest = _message("DescribeRequest")
DescribeResponse = _message("DescribeResponse")
CommandInfo = _message("CommandInfo")
InitSessionRequest = _message("InitSessionRequest")
CloseSessionRequest = _message("CloseSessionRequest")
SessionAck = _message("SessionAck")
Frame = _message("Frame")
Cancel = _message("Cancel")
FrameError = _message("FrameError")
Revoke = _message("Revoke")
RevokeAck = _message("RevokeAck")

__all__ = [
    "SERVICE_NAME",
    "ExecuteRequest",
    "ExecuteResponse",
    "WorkerSpan",
    "StreamChunk",
    "WorkerError",
    "HealthRequest",
    "HealthResponse",
    "DescribeRequest",
    "DescribeResponse",
    "CommandInfo",
    "InitSessionRequest",
    "CloseSessionRequest",
    "SessionAck",
    "Frame",
    "Cancel",
    "FrameError",
    "Revoke",
    "RevokeAck",
]
