"""`accord mcp`: Accord's primitives as MCP tools for LLM agents (issue 18).

The façade is a client of Accord: every tool call goes through accord.client with the
calling MCP session's own token, so authorization, quotas, fencing and idempotency are the
service's, never the façade's. server.py builds the MCPServer; context.py is what a tool
gets from the session that calls it; the tools_*.py modules register the tools.
"""
