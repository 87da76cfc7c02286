"""TicketTalk (Taskmaster-3) app: a SQLite booking backend for the nine ontology APIs and the agent around it. The
file formats and the API-call metrics live beside the task (ctxlab/tasks/tickettalk/: formats.py, metrics.py), so
the task never imports the app.

- `ontology`: the API schema (shipped apis.json or a built-in copy) and where the shared data lives.
- `catalogue` + `values`: a deterministic movie/theater/showtime catalogue and slot-value parsing.
- `backend`: `BookingBackend.call(name, args, idempotency_key=None) -> dict`, transactional bookings.
- `agent`: the agent loop (predict → validate against the ontology → execute → append the response → speak).
- `simulate` + `simuser`: a rule-based agent and user over the backend that generate training dialogues.
- `convert`: SFT / DPO / dialogue-text rows for the training loop; `pipeline`: data prep, evaluation, transcripts
  (`ctxlab tickets ...`).
- `chat`: `ctxlab chat tickets MODEL` (interactive, scripted or simulated user).

Modules are imported explicitly; this package has no import side effects.
"""
