"""The peer for `cargo bench -p snakepit --bench http`: the same commands as
`snakepit serve`'s bundled adapter, behind FastAPI, run by uvicorn with uvloop and
httptools (what a FastAPI user deploys). Same request and response shapes as
`POST /v1/execute`.

    uvicorn fastapi_app:app --workers 4 --loop uvloop --http httptools
"""
from typing import Any, Dict, Optional

from fastapi import FastAPI
from pydantic import BaseModel

from snakepit_bridge.example import ExampleAdapter

adapter = ExampleAdapter()
commands = {name: c.fn for name, c in adapter.commands().items()}
app = FastAPI()


class Execute(BaseModel):
    command: str
    args: Optional[Dict[str, Any]] = None


@app.post("/v1/execute")
async def execute(body: Execute) -> Dict[str, Any]:
    # async: the command runs on the event loop, no thread-pool hop (the fastest FastAPI
    # can serve a CPU-bound function per worker process).
    return {"result": commands[body.command](**(body.args or {}))}
