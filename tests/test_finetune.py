"""finetune_prefix.py, data/tasks.py, evaluate.py: the base stays frozen, only completions count,
decoding and scoring work end to end, and bad task input is a clear error."""
import json
import re

import pytest
import torch

from conftest import one_line_error, run
from data.shakespeare.prepare import prepare
from data.tasks import collate, load_task
from data.tokenizer import ByteTokenizer
from prefix import PrefixTuning
from prefixgpt.checkpoint import load_model, save_prefix, weights_fingerprint
from prefixgpt.decoding import beam_search, generate

TOK = ByteTokenizer()
MRS = [("name[Blue Spice], food[Chinese]", " Blue Spice serves Chinese food."),
       ("name[The Mill], area[riverside]", " The Mill is by the riverside."),
       ("name[Zizzi], food[Italian]", " Zizzi is an Italian place."),
       ("name[Loch Fyne], area[city centre]", " Loch Fyne is in the city centre.")]



def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny base pretrained for a few steps on E2E-like text, and a task split."""
    d = tmp_path_factory.mktemp("ft")
    text = "".join(ref.strip() + "\n" for _, ref in MRS) * 200
    prepare(text, TOK, str(d / "corpus"))
    run("train.py", f"--data_dir={d}/corpus", f"--out_dir={d}/base", "--n_layer=2", "--n_head=2", "--n_embd=32",
        "--block_size=96", "--batch_size=4", "--max_iters=30", "--eval_interval=30", "--eval_iters=2",
        "--learning_rate=3e-3", "--plot=false", "--device=cpu")
    rows = [{"prompt": f"{mr} ||", "completion": ref} for mr, ref in MRS]
    train = write_jsonl(d / "train.jsonl", rows * 3)
    val = write_jsonl(d / "val.jsonl", rows)
    return {"dir": d, "base": str(d / "base" / "best.pt"), "train": train, "val": val}


def finetune(setup, out, *extra, check=True):
    return run("finetune_prefix.py", f"--base={setup['base']}", f"--train_file={setup['train']}",
               f"--val_file={setup['val']}", f"--out_dir={out}", "--n_prefix=4", "--batch_size=4",
               "--max_iters=30", "--eval_interval=10", "--log_interval=10", "--learning_rate=3e-2",
               "--device=cpu", *extra, check=check)


# -- the loss counts completion tokens only ------------------------------------------------------

@pytest.mark.a6(points=2)
def test_prompt_tokens_are_not_targets(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "ab", "completion": "xyz"}])
    (ex,), _ = load_task(path, TOK, max_len=50)
    x, y = collate([ex])
    assert x.tolist() == [TOK.encode("abxyz")]                          # inputs: everything but the last token
    assert y.tolist() == [[-1] + TOK.encode("xyz") + [TOK.eot_token]]   # targets: completion + end marker


@pytest.mark.slow
def test_prompt_tokens_contribute_nothing_to_the_loss(setup):
    model, _ = load_model(setup["base"])
    (ex,), _ = load_task(write_jsonl(setup["dir"] / "one.jsonl", [{"prompt": "zzz ||", "completion": " The Mill"}]),
                         TOK, 90)
    x, y = collate([ex])
    _, loss = model(x, y)
    logp = torch.log_softmax(model(x)[0][0], -1)
    n_prompt = len(TOK.encode("zzz ||"))
    completion = TOK.encode(" The Mill") + [TOK.eot_token]
    manual = -sum(logp[n_prompt - 1 + i, t] for i, t in enumerate(completion)) / len(completion)
    torch.testing.assert_close(loss, manual, atol=1e-5, rtol=0)


def test_batches_cover_each_example_once_per_epoch_in_batches_of_similar_length():
    import random
    from data.tasks import TaskExample, batches
    rng = random.Random(0)
    examples = [TaskExample(list(range(rng.randint(2, 300))), 0) for _ in range(200)]
    stream = batches(examples, 8, seed=0, pool_batches=5)   # pools of 40 examples: 5 pools x 5 batches
    epoch = [next(stream) for _ in range(25)]
    assert sorted(id(e) for b in epoch for e in b) == sorted(id(e) for e in examples)
    useful = sum(len(e.tokens) for b in epoch for e in b) / sum(8 * max(len(e.tokens) for e in b) for b in epoch)
    assert useful > 0.8   # random batches of 8 of these lengths would be about 55% tokens, 45% padding
    assert [len(b) for b in epoch] == [8] * 25


# -- fine-tuning ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("method", ["prefix", "prefix-reparam", "prompt"])
def test_finetune_lowers_val_loss_and_keeps_the_base_bit_identical(setup, tmp_path, method):
    base_bytes = open(setup["base"], "rb").read()
    res = finetune(setup, tmp_path / method, f"--method={method}", "--reparam_hidden=32")
    assert "bit-identical" in res.stdout
    assert open(setup["base"], "rb").read() == base_bytes
    summary = json.load(open(tmp_path / method / "summary.json"))
    assert summary["best_val_loss"] < summary["val_loss_base"]   # the prefix beats the base alone
    for name in ("prefix.pt", "metrics.jsonl", "loss.png", "config.json"):
        assert (tmp_path / method / name).exists()
    saved = torch.load(tmp_path / method / "prefix.pt", weights_only=True)
    assert saved["method"] == ("prefix" if method == "prefix-reparam" else method)   # reparam is folded
    assert saved["metrics"]["val_loss"] == summary["best_val_loss"]


@pytest.mark.slow
def test_text_initialised_prefix_starts_as_those_words(setup, tmp_path):
    res = finetune(setup, tmp_path / "init", "--init=text", "--init_text=name[", "--max_iters=0")
    assert res.returncode == 0
    model, _ = load_model(setup["base"])
    blob = torch.load(tmp_path / "init" / "prefix.pt", weights_only=True)
    kv = model.key_values(torch.tensor([TOK.encode("name")]))
    torch.testing.assert_close(blob["state"]["prefix"][0, 0], kv[0][0][0], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_an_existing_prefix_is_not_overwritten(setup, tmp_path):
    finetune(setup, tmp_path / "p", "--max_iters=2")
    before = (tmp_path / "p" / "prefix.pt").read_bytes()
    res = finetune(setup, tmp_path / "p", "--max_iters=2", check=False)
    assert res.returncode == 1 and "--overwrite" in res.stderr
    assert (tmp_path / "p" / "prefix.pt").read_bytes() == before


# -- evaluation ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_beam_search_of_width_one_is_greedy(setup):
    model, _ = load_model(setup["base"])
    prefix = PrefixTuning(model.config, 3)
    torch.nn.init.normal_(prefix.prefix, std=1.0)
    for text in ("name[The Mill] ||", "Zizzi"):
        idx = torch.tensor([TOK.encode(text)])
        greedy = generate(model, idx, 30, temperature=0, prefix_kv=prefix(model), stop_token=TOK.eot_token)
        greedy = greedy[0, idx.size(1):].tolist()
        if TOK.eot_token in greedy:
            greedy = greedy[:greedy.index(TOK.eot_token) + 1]
        assert beam_search(model, idx, 30, beam_width=1, prefix_kv=prefix(model), stop_token=TOK.eot_token) == greedy


@pytest.mark.slow
def test_batched_greedy_equals_one_prompt_at_a_time(setup):
    """(prefix, prompt) rows of different prefixes and prompt lengths decoded in one mixed batch (their
    caches batched like mixed-length prefixes) give exactly what generate gives for each row alone."""
    from prefixgpt.scoring import decode_rows
    model, _ = load_model(setup["base"])
    prefixes = []
    for n in (3, 6):
        prefix = PrefixTuning(model.config, n)
        torch.nn.init.normal_(prefix.prefix, std=1.0)
        prefixes.append(prefix(model))
    prompts = [TOK.encode(t) for t in ("n", "Zizzi", "name[The Mill] ||", "Loch")]
    rows = [(kv, ids) for kv in [None] + prefixes for ids in prompts]
    for (prefix_kv, ids), new in zip(rows, decode_rows(model, rows, 20, stop=-1)):
        alone = generate(model, torch.tensor([ids]), 20, temperature=0, prefix_kv=prefix_kv)
        assert new == alone[0, len(ids):].tolist()


@pytest.mark.slow
def test_wider_beams_find_sequences_at_least_as_likely(setup):
    """With no length penalty, beam search's answer scores at least as high as greedy's."""
    model, _ = load_model(setup["base"])
    idx = torch.tensor([TOK.encode("name[Zizzi], food[Italian] ||")])

    def logprob(tokens):
        seq = torch.cat([idx, torch.tensor([tokens])], 1)
        logp = torch.log_softmax(model(seq[:, :-1])[0][0], -1)
        return sum(logp[idx.size(1) - 1 + i, t].item() for i, t in enumerate(tokens))

    greedy = beam_search(model, idx, 12, beam_width=1, length_penalty=0.0)
    beam = beam_search(model, idx, 12, beam_width=4, length_penalty=0.0)
    assert len(greedy) == len(beam) == 12
    assert logprob(beam) >= logprob(greedy) - 1e-4


@pytest.mark.slow
def test_generate_for_a_jsonl_file_end_to_end(setup, tmp_path):
    finetune(setup, tmp_path / "p", "--max_iters=10")
    out = tmp_path / "completions.jsonl"
    res = run("evaluate.py", "--mode=generate", f"--base={setup['base']}", f"--prefix={tmp_path}/p/prefix.pt",
              f"--data={setup['train']}", f"--out={out}", "--beam=2", "--max_new_tokens=20")
    rows = [json.loads(line) for line in open(out, encoding="utf-8")]
    assert [r["prompt"] for r in rows] == [f"{mr} ||" for mr, _ in MRS]   # one per distinct prompt
    assert ": 4 prompts (beam 2)" in res.stdout                      # one per distinct prompt
    for measure in ("BLEU-4", "NIST", "METEOR", "ROUGE-L", "CIDEr", "facts carried", "names", "wrong", "added"):
        assert re.search(rf"prefix.pt .*{measure} \d", res.stdout), (measure, res.stdout)
    assert "Li & Liang" in res.stdout and "their numbers" in res.stdout
    assert re.search(r"facts stated, by attribute: name \d+%", res.stdout), res.stdout   # the MRs' names first
    # several prefixes and the base in one greedy run: a line per (prefix, prompt), a BLEU per prefix,
    # and each prefix's completions are those it gives when evaluated alone
    finetune(setup, tmp_path / "q", "--max_iters=10", "--method=prompt")
    both = f"--prefix={tmp_path}/p/prefix.pt,{tmp_path}/q/prefix.pt"
    res = run("evaluate.py", "--mode=generate", f"--base={setup['base']}", both, "--with_base",
              f"--data={setup['train']}", f"--out={out}", "--max_new_tokens=20", "--overwrite")
    rows = [json.loads(line) for line in open(out, encoding="utf-8")]
    assert [r["prefix"] for r in rows] == ["no prefix"] * 4 + ["p/prefix.pt"] * 4 + ["q/prefix.pt"] * 4
    for label in ("no prefix", "p/prefix.pt", "q/prefix.pt"):
        assert re.search(rf"{re.escape(label)} +BLEU-4 \d", res.stdout), res.stdout
    run("evaluate.py", "--mode=generate", f"--base={setup['base']}", f"--prefix={tmp_path}/q/prefix.pt",
        f"--data={setup['train']}", f"--out={tmp_path}/alone.jsonl", "--max_new_tokens=20")
    alone = [json.loads(line)["completion"] for line in open(tmp_path / "alone.jsonl", encoding="utf-8")]
    assert [r["completion"] for r in rows[8:]] == alone
    res = run("evaluate.py", "--mode=loss", f"--base={setup['base']}", f"--prefix={tmp_path}/p/prefix.pt",
              f"--data={setup['val']}")
    assert "perplexity" in res.stdout
    # bytes: one token a byte (ASCII completions), so nats per byte is the loss itself
    for per_token, per_byte in re.findall(r"loss ([\d.]+) \| perplexity [\d.]+ \| ([\d.]+) nats per byte", res.stdout):
        assert abs(float(per_token) - float(per_byte)) < 1e-3


def test_bf16_decoding_runs_on_weights_cast_once_in_sample_and_evaluate(setup, tmp_path):
    # --dtype=bfloat16: the scripts decode with decoding.cast_for_inference's copy, after the prefix was
    # checked against the base's own weights, under autocast in every mode
    finetune(setup, tmp_path / "p", "--max_iters=2")
    prefix = f"--prefix={tmp_path}/p/prefix.pt"
    res = run("evaluate.py", "--mode=generate", f"--base={setup['base']}", prefix, f"--data={setup['val']}",
              "--max_new_tokens=8", "--dtype=bfloat16", "--device=cpu")
    assert "BLEU-4" in res.stdout
    res = run("sample.py", f"--base={setup['base']}", prefix, "--prompt=name[Zizzi] ||", "--num_samples=1",
              "--max_new_tokens=8", "--dtype=bfloat16", "--device=cpu", "--with_base")
    assert res.stdout.count("--- [") == 2


def test_completion_bytes_counts_the_text_the_targets_spell_in_any_tokenizer(tmp_path):
    from data.tokenizer import get_tokenizer
    from prefixgpt.scoring import completion_bytes
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": f"{mr} ||", "completion": ref} for mr, ref in MRS])
    for name in ("byte", "gpt2_2048", "gpt2_300"):
        tok = get_tokenizer(name)
        examples, _ = load_task(path, tok, max_len=200)
        # every completion's bytes, and one byte for each end marker ("\n")
        assert completion_bytes(tok, examples) == sum(len(ref.encode()) + 1 for _, ref in MRS)
    examples, _ = load_task(path, TOK, max_len=40)          # cut: only the bytes that were kept count
    assert completion_bytes(TOK, examples) == sum(len(e.tokens) - e.n_prompt for e in examples)


@pytest.mark.slow
def test_classification_by_label_likelihood(setup, tmp_path):
    data = write_jsonl(tmp_path / "cls.jsonl", [{"prompt": "The Mill is by the", "completion": " riverside."},
                                                {"prompt": "Zizzi is an", "completion": " Italian place."}])
    res = run("evaluate.py", "--mode=classify", f"--base={setup['base']}", f"--data={data}",
              "--labels= riverside., Italian place.")
    assert "accuracy" in res.stdout and "macro-F1" in res.stdout


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("lines,message", [
    ([{"prompt": "a"}], ":1: missing or non-string 'completion'"),
    ([{"prompt": "a", "completion": "b"}, "{not json"], ":2: not valid JSON"),
    ([], "holds no examples"),
    ([{"prompt": "x" * 200, "completion": "b"}], ":1: the prompt is 200 tokens"),
])
@pytest.mark.slow
def test_bad_task_files_name_the_file_and_line(setup, tmp_path, lines, message):
    bad = write_jsonl(tmp_path / "bad.jsonl", lines)
    res = run("finetune_prefix.py", f"--base={setup['base']}", f"--train_file={bad}", f"--val_file={setup['val']}",
              f"--out_dir={tmp_path}/o", "--n_prefix=4", check=False)
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert "bad.jsonl" in res.stderr and message in res.stderr
    assert not (tmp_path / "o" / "prefix.pt").exists()


@pytest.mark.slow
def test_a_prefix_for_another_base_is_refused(setup, tmp_path):
    model, _ = load_model(setup["base"])
    torch.manual_seed(5)
    other = PrefixTuning(model.config, 4)
    path = str(tmp_path / "other.pt")
    save_prefix(path, other, "byte", base_fingerprint="0123456789abcdef")
    res = run("sample.py", f"--base={setup['base']}", f"--prefix={path}", check=False)
    assert res.returncode == 1 and "another base model" in res.stderr
    save_prefix(path, other, "gpt2", base_fingerprint=weights_fingerprint(model))
    res = run("evaluate.py", f"--base={setup['base']}", f"--prefix={path}", f"--data={setup['val']}", check=False)
    assert res.returncode == 1 and "'gpt2' tokenizer" in res.stderr


@pytest.mark.slow
def test_a_task_tokenized_differently_from_the_base_is_refused(setup, tmp_path):
    d = tmp_path / "gpt2data"
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16"}))
    (d / "train.bin").write_bytes(b"\x01\x00" * 100)
    res = run("finetune_prefix.py", f"--base={setup['base']}", f"--train_file={d}/train.bin",
              f"--val_file={setup['val']}", f"--out_dir={tmp_path}/o", check=False)
    assert res.returncode == 1 and "'gpt2' tokens but the base model uses the 'byte' tokenizer" in res.stderr


@pytest.mark.slow
def test_sample_with_two_prefixes_in_one_mixed_batch(setup, tmp_path):
    model, _ = load_model(setup["base"])
    paths = []
    for n in (2, 5):
        p = PrefixTuning(model.config, n)
        torch.nn.init.normal_(p.prefix, std=1.0)
        paths.append(str(tmp_path / f"p{n}.pt"))
        save_prefix(paths[-1], p, "byte", weights_fingerprint(model))
    res = run("sample.py", f"--base={setup['base']}", f"--prefix={','.join(paths)}", "--with_base",
              "--prompt=name[", "--num_samples=1", "--max_new_tokens=10", "--temperature=0")
    for label in ("[no prefix]", "[p2.pt]", "[p5.pt]"):
        assert label in res.stdout


@pytest.mark.slow
def test_requests_serve_each_row_with_its_own_prefix_and_prompt(setup, tmp_path):
    """sample.py --requests: rows of different prefixes (and none) and prompts of different lengths in
    one mixed batch; each row's greedy output is what that row decoded alone gives."""
    from sample import serve_requests
    model, _ = load_model(setup["base"])
    paths = []
    for n in (2, 5):
        torch.manual_seed(n)
        p = PrefixTuning(model.config, n)
        torch.nn.init.normal_(p.prefix, std=1.0)
        paths.append(str(tmp_path / f"p{n}.pt"))
        save_prefix(paths[-1], p, "byte", weights_fingerprint(model))
    rows = [{"prefix": paths[0], "prompt": "name[The Eagle] ||"}, {"prefix": "", "prompt": "name["},
            {"prefix": paths[1], "prompt": "The"}, {"prefix": paths[0], "prompt": "area[city centre], name[X] ||"}]
    requests = write_jsonl(tmp_path / "requests.jsonl", rows)
    served = serve_requests(model, TOK, requests, 12, temperature=0.0, top_k=None)
    assert [label for label, _, _ in served] == ["p2.pt", "no prefix", "p5.pt", "p2.pt"]
    for r, (_, prompt, text) in zip(rows, served):
        alone = write_jsonl(tmp_path / "alone.jsonl", [r])
        assert serve_requests(model, TOK, alone, 12, temperature=0.0, top_k=None)[0][2] == text
        assert prompt == r["prompt"]
    # and "alone" is the model's own generate with that row's prefix as its KV cache
    from prefixgpt.checkpoint import load_prefix
    for r, (_, _, text) in zip(rows, served):
        prefix_kv = load_prefix(r["prefix"], model)[0](model) if r["prefix"] else None
        ids = torch.tensor([TOK.encode(r["prompt"])])
        out = generate(model, ids, 12, temperature=0, prefix_kv=prefix_kv)[0, ids.size(1):].tolist()
        assert TOK.decode(out) == text
    res = run("sample.py", f"--base={setup['base']}", f"--requests={requests}", "--temperature=0",
              "--max_new_tokens=12")
    assert res.stdout.count("--- [p2.pt] ---") == 2 and "--- [no prefix] ---" in res.stdout
    res = run("sample.py", f"--base={setup['base']}", f"--requests={requests}", "--prompt=x", check=False)
    one_line_error(res, "--requests", "--prompt")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prefix": "", "prompt": "x" * 200}])
    one_line_error(run("sample.py", f"--base={setup['base']}", f"--requests={bad}", check=False), "bad.jsonl:1")


def test_completion_logprob_keeps_the_input_order_when_it_batches_by_length():
    from model import GPT, GPTConfig
    from prefixgpt.scoring import completion_logprob
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=256))
    rows = [("a long prompt of many bytes", " yes"), ("ab", " no"), ("a middling prompt", " maybe"), ("x", " y")]
    examples = [load_task_row(p, c) for p, c in rows]
    batched = completion_logprob(model, None, examples, batch_size=2)    # sorted by length inside
    alone = torch.cat([completion_logprob(model, None, [e], batch_size=1) for e in examples])
    assert torch.allclose(batched, alone, atol=1e-5)


def load_task_row(prompt, completion):
    from data.tasks import TaskExample
    p = TOK.encode(prompt)
    return TaskExample(p + TOK.encode(completion) + [TOK.eot_token], len(p), prompt, completion)
