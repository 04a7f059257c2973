"""The sandbox: the agent toolset served as an MCP server."""
