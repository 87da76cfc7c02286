"""TicketTalk (Taskmaster-3) app: file formats, a SQLite booking backend for the nine ontology APIs, metrics.

- `formats`: dialogue JSON, split TSV (`<U> <A> <PN> <PR> <C>` markup) and reward JSON readers/writers.
- `ontology`: the API schema (shipped apis.json or a built-in copy) and where the shared data lives.
- `catalogue` + `values`: a deterministic movie/theater/showtime catalogue and slot-value parsing.
- `backend`: `Backend.call(name, args, idempotency_key=None) -> dict`, transactional bookings.
- `metrics`: BLEU over replies, API-call exact match and argument F1 for the `tickettalk` task.
- `agent`: the agent loop (predict → validate against the ontology → execute → append the response → speak).
- `simulate` + `simuser`: a rule-based agent and user over the backend that generate training dialogues.
- `convert`: SFT / DPO / dialogue-text rows for the training loop; `pipeline`: data prep, evaluation, transcripts.
- `chat`: `ctxlab chat tickets MODEL` (interactive, scripted or simulated user).

Modules are imported explicitly; this package has no import side effects.
"""
