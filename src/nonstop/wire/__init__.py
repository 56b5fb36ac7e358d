"""Sans-IO protocol code: bytes and parsed JSON in, bytes and parsed JSON out, no I/O.

    sse           SSE decoding and encoding; JSONEventDecoder parses each event's data
    framing       cheap checks on the cloud's raw bytes (event boundaries, shape, type)
    anthropic     the Anthropic request a local server can take, token estimates, Event
    validate      what a Messages request must satisfy before nonstop serves it
    local_stream  a local server's Anthropic stream made safe for strict clients
    hygiene       history going back to the cloud after local turns
    tool_ids      tool ids the Anthropic API accepts
    errors        error bodies in each client protocol
    openai/       translation to and from OpenAI Chat Completions, in four directions

docs/wire.md holds the protocol facts this code relies on.
"""
