"""TicketTalk agent: the agent loop (scripted predictor), the simulator, the converters, SFT/DPO on the training
loop, and the chat CLI."""

import json
from random import Random

import pytest

from ctxlab.apps.tickets.agent import (
    AgentConfig,
    NativePredictor,
    ScriptedPredictor,
    TicketAgent,
    split_items_text,
    validate_call,
)
from ctxlab.apps.tickets.backend import BookingBackend
from ctxlab.apps.tickets.catalogue import build_catalogue
from ctxlab.apps.tickets.chat import read_user_script, run_chat
from ctxlab.apps.tickets.convert import (
    END_TEXT,
    Stats,
    action_text,
    corrupt_call,
    dpo_rows,
    fit_prompt,
    lm_text,
    sft_rows,
    split_conversations,
)
from ctxlab.apps.tickets.ontology import BUILTIN_APIS, parse_ontology
from ctxlab.apps.tickets.simulate import SimUser, sim_examples, simulate
from ctxlab.errors import CtxlabError
from ctxlab.fileio import write_jsonl_atomic
from ctxlab.tasks.tickettalk.formats import (
    ApiCall,
    ApiResponse,
    RewardExample,
    Utterance,
    format_items,
    format_tsv,
    parse_items,
    parse_tsv,
)

ONT = parse_ontology(BUILTIN_APIS, "builtin")
FIND = "<PN>find_theaters<PAN>location<PAV>Spring Hills, Kansas<PAN>name.movie<PAV>No Time To Die"
BOOK = ("<PN>book_tickets<PAN>name.movie<PAV>No Time To Die<PAN>name.theater<PAV>AMC Mountain 16"
        "<PAN>time.showing<PAV>7:10pm<PAN>num.tickets<PAV>2")


@pytest.fixture(scope="module")
def catalogue():
    return build_catalogue()  # the built-in catalogue: fast and independent of the shared data


@pytest.fixture
def backend(tmp_path, catalogue):
    b = BookingBackend(tmp_path / "t.db", catalogue=catalogue, ontology=ONT)
    yield b
    b.close()


@pytest.fixture(scope="module")
def sims(catalogue):
    return simulate(40, seed=7, catalogue=catalogue)


# ---------------------------------------------------------------------------------------------- agent loop


def test_call_is_validated_executed_and_its_response_fed_back(backend):
    pred = ScriptedPredictor([FIND, "<A>It is playing at AMC Mountain 16. Which theater would you like?"])
    agent = TicketAgent(pred, backend, ontology=ONT)
    turn = agent.user("I want to see No Time To Die in Spring Hills")
    assert [e.kind for e in turn.events] == ["call", "response", "say"]
    call, result = turn.calls[0]
    assert call.name == "find_theaters" and result["ok"]
    assert "AMC Mountain 16" in result["response"]["name.theater"]
    # the second prediction saw the call and its real response, in the TM-3 markup
    assert pred.seen[0] == "<U>I want to see No Time To Die in Spring Hills"
    assert pred.seen[1].startswith(pred.seen[0] + FIND + "<PR>find_theaters<PRAN>name.theater<PRAV>")
    assert turn.reply.startswith("It is playing") and turn.guard is None
    assert format_items(agent.history) == pred.seen[1] + "<A>" + turn.reply


def test_reply_and_call_in_one_action(backend):
    pred = ScriptedPredictor(["<A>Let me check.<PN>find_showtimes<PAN>name.movie<PAV>No Time To Die"
                              "<PAN>name.theater<PAV>AMC Mountain 16", "<A>4:30pm, 7:10pm or 9:45pm?"])
    turn = TicketAgent(pred, backend, ontology=ONT).user("When is No Time To Die on at AMC Mountain 16?")
    assert [e.kind for e in turn.events] == ["say", "call", "response", "say"]
    assert turn.calls[0][1]["response"]["time.showing"] == ["4:30pm", "7:10pm", "9:45pm"]
    assert turn.reply == "4:30pm, 7:10pm or 9:45pm?"


@pytest.mark.parametrize("bad, code", [
    ("<PN>find_showtimes<PAN>name.movie<PAV>Mulan", "missing_argument"),
    ("<PN>buy_popcorn<PAN>size<PAV>large", "unknown_api"),
    ("<PN>find_movies<PAN>color<PAV>red", "unknown_argument"),
    ("<PN>find_movies<PAN>location<PAV>a<PAN>location<PAV>b", "duplicate_argument"),
    ("<PN>resolve_movie<PAN>name.movie<PAV> ", "invalid_argument"),
])
def test_invalid_call_becomes_an_error_response(backend, bad, code):
    pred = ScriptedPredictor([bad, "<A>Sorry, which theater?"])
    turn = TicketAgent(pred, backend, ontology=ONT).user("hi")
    assert [e.kind for e in turn.events] == ["invalid", "response", "say"]
    assert turn.calls[0][1]["error"]["code"] == code
    err = [it for it in parse_items(pred.seen[1]) if isinstance(it, ApiResponse)]
    assert err[0].key == "error" and err[0].values[0] == code
    assert backend.bookings() == []


def test_retry_policy_drops_the_invalid_call(backend):
    pred = ScriptedPredictor(["<PN>find_showtimes<PAN>name.movie<PAV>Mulan", "<A>Which theater?"])
    turn = TicketAgent(pred, backend, ontology=ONT, config=AgentConfig(on_invalid="retry")).user("hi")
    assert [e.kind for e in turn.events] == ["retry", "say"]
    assert pred.seen[1] == pred.seen[0] == "<U>hi"  # the dropped call never reached the history
    with pytest.raises(CtxlabError, match="on_invalid"):
        AgentConfig(on_invalid="ignore")


def test_guards_end_runaway_turns(backend):
    locations = ["Spring Hills, Kansas", "Brando, Texas", "Petaluma, California", "Oak Valley, Arkansas",
                 "Santa Barbara, California", "Hillview, Washington"]
    pred = ScriptedPredictor([f"<PN>find_movies<PAN>location<PAV>{x}" for x in locations])
    turn = TicketAgent(pred, backend, ontology=ONT, config=AgentConfig(max_calls_per_turn=3)).user("what's on?")
    assert len(turn.calls) == 3 and "API calls" in turn.guard
    assert turn.reply == AgentConfig().fallback_reply and turn.events[-1].kind == "say"
    # the same call twice in a turn is a loop too
    pred = ScriptedPredictor([FIND, FIND])
    turn = TicketAgent(pred, backend, ontology=ONT).user("hi")
    assert len(turn.calls) == 1 and turn.guard.startswith("repeated call")
    # output with no action at all
    turn = TicketAgent(ScriptedPredictor(["<PR>find_movies<PRAN>x<PRAV>y"]), backend, ontology=ONT).user("hi")
    assert turn.guard and turn.calls == [] and [e.kind for e in turn.events] == ["empty", "guard", "say"]


def test_booking_is_idempotent_within_a_session(backend):
    agent = TicketAgent(ScriptedPredictor([BOOK, "<A>Booked!", BOOK, "<A>Booked again?"]), backend, ontology=ONT)
    agent.user("book it")
    agent.user("book it again")
    assert len(backend.bookings()) == 1
    with pytest.raises(CtxlabError, match="markup"):
        agent.user("<PN>book_tickets")


def test_native_predictor_truncates_whole_items(tmp_path, sims):
    from ctxlab.apps.tickets.pipeline import build_init

    ckpt = build_init(tmp_path / "m", [format_items(s.items) for s in sims[:10]], vocab_size=400, max_len=256,
                      hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16)
    pred = NativePredictor(ckpt, max_new_tokens=8, max_prompt_tokens=60)
    history = format_items(sims[0].items)
    ids = pred.encode(history)
    assert 0 < len(ids) <= 60 and pred.truncated == 1
    text = pred.tok.decode(ids)
    assert history.endswith(text) and split_items_text(text)[0][:2] in ("<U", "<A", "<P")
    assert pred.tok.count_tokens("<PN>find_showtimes<PAN>time.showing") == 4  # tags and schema names: 1 token
    out = pred.predict_batch([history, "<U>hi"], batch_size=2)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)


# ----------------------------------------------------------------------------------------------- simulator


def test_simulator_is_deterministic(catalogue, sims):
    again = simulate(40, seed=7, catalogue=catalogue)
    assert [s.items for s in again] == [s.items for s in sims]
    other = simulate(5, seed=8, catalogue=catalogue)
    assert [s.items for s in other] != [s.items for s in sims[:5]]


def test_simulated_calls_are_valid_and_execute(tmp_path, catalogue, sims):
    fresh = BookingBackend(tmp_path / "replay.db", catalogue=catalogue, ontology=ONT)
    apis = set()
    try:
        for s in sims:
            for call, responses in s.calls():
                assert validate_call(call, ONT) is None, call
                result = fresh.call(call.name, call.arg_dict(), idempotency_key=f"replay:{s.conversation_id}")
                assert result["ok"], (call, result)
                assert tuple(ApiResponse(call.name, k, tuple(v)) for k, v in result["response"].items()) == responses
                apis.add(call.name)
    finally:
        fresh.close()
    assert {"find_theaters", "find_showtimes", "check_tickets", "book_tickets"} <= apis
    assert sum(s.booked for s in sims) >= 0.9 * len(sims)


def test_simulated_dialogues_are_tm3_split_rows(sims):
    rows = sim_examples(sims)
    assert len(rows) > 10 * len(sims) / 2
    text = format_tsv(rows)
    assert parse_tsv(text) == rows  # same grammar and quoting as train-bc.tsv
    assert text.count("\r\n") == len(rows)
    kinds = {("call" if r.target.call else "text") for r in rows}
    assert kinds == {"call", "text"}
    for r in rows:
        assert r.conversation_id.startswith("sim-7-")


def test_simulated_user_answers_agent_text(catalogue):
    from ctxlab.apps.tickets.simulate import sim_user

    user = sim_user(3, catalogue=catalogue)
    assert isinstance(user, SimUser)
    g = user.g
    first = user.opening()
    assert first.text
    ans = user.respond("How many tickets would you like?")
    assert ans.slots.get("num.tickets") == g.tickets_say
    ans = user.respond(f"{g.movie} is playing at {g.theater} at 1:00pm and {g.time}. Which showtime would you like?")
    assert ans.slots.get("time.showing") == g.time or ans.slots.get("any_time") or ans.slots.get("attribute")
    assert user.respond("Shall I book them?").slots == {"confirm": "yes"}
    assert user.respond("Your tickets are booked. Enjoy!").slots == {"thanks": "yes"}
    assert user.respond("You're welcome.") is None


# ---------------------------------------------------------------------------------------------- converters


def test_sft_rows_fit_and_keep_whole_items(sims):
    rows = sim_examples(sims[:5])
    stats = Stats()
    out = sft_rows(rows, max_tokens=120, count_tokens=len, stats=stats)  # 1 char = 1 token: tight
    assert stats.rows + stats.dropped == len(rows) and stats.truncated > 0
    for r, ex in zip(out, [x for x in rows if len(action_text(x.target.text, x.target.call)) < 119], strict=False):
        assert len(r["prompt"]) + len(r["completion"]) + 1 <= 120
        assert r["completion"].startswith(("<A>", "<PN>"))
        parse_items(r["prompt"])  # well-formed markup
        assert r["prompt"].startswith(("<U>", "<A>", "<PN>", "<PR>", "<S>"))
        del ex
    full = sft_rows(rows[:3], max_tokens=10_000)
    ex = rows[2]
    assert full[2]["prompt"] == format_items([*(ex.history or ()), ex.head])
    assert full[2]["completion"] == action_text(ex.target.text, ex.target.call)
    assert fit_prompt(parse_items("<U>" + "x" * 50), 10, len) is None


def test_dpo_rows_natural_and_synthetic_pairs():
    ctx = (Utterance("agent", "Hi."), Utterance("user", "Movies near me?"))
    good = ApiCall("find_movies", (("location", "nearby"),))
    bad = Utterance("agent", "Goodbye.")
    exs = [RewardExample("a", ctx, good, 1.0), RewardExample("b", ctx, bad, 0.0),
           RewardExample("c", ctx[:1] + (Utterance("user", "Thanks"),), Utterance("agent", "You're welcome."), 1.0),
           RewardExample("d", ctx[:1], ApiCall("find_movies", (("location", "Austin"),)), 0.0)]
    natural = dpo_rows(exs, negatives="natural")
    assert natural == [{"prompt": "<A>Hi.<U>Movies near me?", "chosen": "<PN>find_movies<PAN>location<PAV>nearby",
                        "rejected": "<A>Goodbye.", "conversation_id": "a", "source": "natural"}]
    rows = dpo_rows(exs)
    assert {r["source"].split(":")[0] for r in rows} == {"natural", "synthetic"}
    assert all(r["chosen"] != r["rejected"] for r in rows)
    assert dpo_rows(exs) == rows  # deterministic
    wrong, kind = corrupt_call(good, Random(0), {"location": ["nearby", "Austin"]}, ["find_movies", "find_theaters"])
    assert wrong != good and kind in ("drop_arg", "swap_value", "wrong_api")
    assert corrupt_call(ApiCall("find_movies"), Random(0), {}, ["find_movies"]) is None
    with pytest.raises(CtxlabError, match="negatives"):
        dpo_rows(exs, negatives="all")


def test_lm_text_and_conversation_split(sims):
    text = lm_text([s.items for s in sims[:3]])
    docs = [d for d in text.split(END_TEXT) if d]
    assert len(docs) == 3 and parse_items(docs[0]) == list(sims[0].items)
    rows = sim_examples(sims)
    train, test = split_conversations(rows, 0.3, seed=1)
    assert len(train) + len(test) == len(rows) and test
    assert not {r.conversation_id for r in train} & {r.conversation_id for r in test}


# --------------------------------------------------------------------------------------- training loop


def _micro_config(tmp_path, kind, init, jsonl, steps):
    cfg = {"out_dir": str(tmp_path / kind), "seed": 0, "threads": 1, "model": {"init": str(init)},
           "data": {"seq_len": 200, "heldout": 0.0, "jsonl": str(jsonl)},
           "optim": {"lr": 3e-3 if kind == "sft" else 1e-3, "warmup_steps": 1, "max_steps": steps, "batch_size": 4,
                     "weight_decay": 0.0, "min_lr_ratio": 1.0},
           "eval": {"every": 0, "max_batches": 1}, "checkpoint": {"every": 0, "keep": 1}}
    path = tmp_path / f"{kind}.json"
    path.write_text(json.dumps(cfg))
    return path


def test_sft_and_dpo_lower_their_losses_on_the_training_loop(tmp_path, sims):
    train = pytest.importorskip("ctxlab.train")
    from ctxlab.apps.tickets.pipeline import build_init
    from ctxlab.tokenizer import Tokenizer

    init = build_init(tmp_path / "init", [format_items(s.items) for s in sims], vocab_size=400, max_len=256,
                      hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=24)
    count = Tokenizer.from_dir(init).count_tokens
    sft = sft_rows(sim_examples(sims[:2])[:8], max_tokens=200, count_tokens=count)
    write_jsonl_atomic(tmp_path / "sft.jsonl", sft)
    res = train.run_training("sft", _micro_config(tmp_path, "sft", init, tmp_path / "sft.jsonl", 20))
    losses = res.losses
    assert sum(losses[-3:]) / 3 < 0.75 * sum(losses[:3]) / 3, losses

    ctx = (Utterance("agent", "Hi."), Utterance("user", "What is playing near me?"))
    good = ApiCall("find_movies", (("location", "nearby"),))
    exs = [RewardExample(f"c{i}", ctx + (Utterance("user", f"x{i}"),), good, 1.0) for i in range(4)]
    write_jsonl_atomic(tmp_path / "dpo.jsonl", dpo_rows(exs, max_tokens=200, count_tokens=count))
    res = train.run_training("dpo", _micro_config(tmp_path, "dpo", res.final_dir, tmp_path / "dpo.jsonl", 10))
    assert abs(res.losses[0] - 0.6931) < 0.01  # policy == reference at the start
    assert res.losses[-1] < 0.6, res.losses


# ------------------------------------------------------------------------------------------------ chat CLI


def test_scripted_chat_writes_a_transcript(tmp_path, backend):
    script = tmp_path / "user.txt"
    script.write_text("# a booking\nTwo tickets for No Time To Die at AMC Mountain 16 at 7:10pm\n\nYes please\n")
    assert read_user_script(script) == ["Two tickets for No Time To Die at AMC Mountain 16 at 7:10pm", "Yes please"]
    pred = ScriptedPredictor([BOOK.replace("book_tickets", "check_tickets"), "<A>Available. Shall I book them?",
                              BOOK, "<A>Your tickets are booked."])
    out = tmp_path / "screen.txt"
    with out.open("w") as f:
        summary = run_chat("scripted", script, None, 5, predictor=pred, backend=backend, transcript=tmp_path / "t",
                           out=f)
    assert summary["turns"] == 2 and summary["api_calls"] == 2 and summary["bookings"] == 1
    records = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert records[0]["role"] == "meta" and records[-1]["role"] == "summary"
    assert [r["role"] for r in records[1:-1]] == ["user", "call", "response", "say", "user", "call", "response", "say"]
    assert records[3]["data"]["result"]["response"] == {"status": ["available"]}
    txt = (tmp_path / "t.txt").read_text()
    assert '→ book_tickets(name.movie="No Time To Die"' in txt and "← status: success" in txt
    assert "agent> Your tickets are booked." in out.read_text()
    with pytest.raises(CtxlabError, match="no user utterances"):
        (tmp_path / "empty.txt").write_text("# nothing\n")
        run_chat("scripted", tmp_path / "empty.txt", None, 5, predictor=pred)


def test_simulated_user_and_interactive_chat(tmp_path, backend):
    pred = ScriptedPredictor(["<A>Which movie would you like to see?"] * 3)
    summary = run_chat("scripted", None, None, 3, simulate_user=True, seed=1, predictor=pred, backend=backend,
                       transcript=tmp_path / "sim", out=open(tmp_path / "o.txt", "w"))
    assert summary["turns"] == 3 and (tmp_path / "sim.txt").is_file()
    meta = json.loads((tmp_path / "sim.jsonl").read_text().splitlines()[0])
    assert meta["mode"] == "simulated-user" and meta["goal"]["movie"]
    inputs = iter(["/help", "hello", "/quit", "never read"])
    summary = run_chat("scripted", None, None, 5, predictor=ScriptedPredictor(["<A>Hi! How can I help?"]),
                       backend=backend, input_fn=lambda _: next(inputs), out=open(tmp_path / "i.txt", "w"))
    assert summary["turns"] == 1 and "transcript_jsonl" not in summary
    assert "agent> Hi! How can I help?" in (tmp_path / "i.txt").read_text()


def test_chat_command_line(tmp_path):
    from typer.testing import CliRunner

    from ctxlab.cli import app

    r = CliRunner().invoke(app, ["chat", "pizza", "some-model"])
    assert r.exit_code != 0 and "unknown chat app" in str(r.exception)
    r = CliRunner().invoke(app, ["chat", "tickets", "some-model", "--user-script", str(tmp_path / "missing.txt")])
    assert "user script not found" in str(r.exception)
