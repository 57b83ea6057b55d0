"""LangChain (and LangGraph) tools whose calls happen exactly once.

`ledger_tool(run.tool()(fn))` turns a tool wrapped by an EffectRun into a LangChain
StructuredTool: a LangGraph ToolNode, or any LangChain agent, calls it as usual, and the
effect ledger decides whether it really runs. The schema the model sees is the
function's, without `effect_key` (the function still receives it, to pass on to the
external API as its idempotency key).

Which call is "the same call"? When the model asks for a tool call, the call has an id
(`tool_call_id`) that is stored with the model's message in the graph's checkpoint; a
graph resumed after a crash re-executes the tool node with the same message, so the id
is the step: the retry finds the first attempt's record. A call made without an id (a
plain `ainvoke` with arguments) takes the run's next step number instead.

Needs langchain-core (not one of Accord's dependencies): pip install langchain-core.
"""

from __future__ import annotations

from typing import Annotated, Any

from langchain_core.tools import InjectedToolCallId, StructuredTool
from langchain_core.tools.base import create_schema_from_function
from pydantic import create_model

from accord.client import EffectTool


def ledger_tool(tool: EffectTool[Any], description: str | None = None) -> StructuredTool:
    """A LangChain tool that makes each call as one step of tool's run."""
    arguments = create_schema_from_function(tool.name, tool.fn, filter_args=["effect_key"])
    schema = create_model(  # the call's id is injected by LangChain, never asked of the model
        tool.name,
        __base__=arguments,
        tool_call_id=(Annotated[str | None, InjectedToolCallId], None),
    )

    async def call(tool_call_id: str | None = None, **kwargs: Any) -> Any:
        if tool_call_id:
            return await tool.at(f"tool-call:{tool_call_id}")(**kwargs)
        return await tool(**kwargs)

    return StructuredTool.from_function(
        coroutine=call,
        name=tool.name,
        description=description or (tool.fn.__doc__ or tool.name).strip(),
        args_schema=schema,
    )
