"""`ctxlab serve`: an OpenAI-compatible HTTP server over one ctxlab model, with qTTT as a per-request option.

- schemas.py: request bodies → validated, tokenized frozen dataclasses; OpenAI-style error objects.
- model.py:   the served model (weights, tokenizer, chat template, context limit) shared by the server and the REPL.
- worker.py:  the one thread that runs the model: a FIFO queue, batched decoding of compatible requests, qTTT
              requests alone with their weights restored before the next one.
- app.py:     the Starlette application (routes, SSE streaming, the chat page) and `serve_cli`.
- repl.py:    `ctxlab chat MODEL`, a terminal chat with history and the chat template.
- static/:    the web chat page served at `/`.
"""
