"""``examples/finetune_lora.py --small``, run once and checked from the outside with transformers and torch: the
files it says it writes, the merged export's logits in transformers equal the fine-tuned run's in qorus, and
the held-out pairs' loss, computed by transformers on the base folder and on the merged export, fell (and equals
what the example printed). One thread: the models are tiny."""

from __future__ import annotations

import json

import numpy as np
import pytest

import qorus_jit
from qorus_jit import load_source
from tests.helpers import load_example
from tests.test_hf import transformers_or_skip

SEED = 0


@pytest.fixture(scope="module")
def example():
    return load_example("finetune_lora")


@pytest.fixture(scope="module")
def result(example, tmp_path_factory):
    before = qorus_jit.get_num_threads()
    qorus_jit.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("finetune") / "out"
        yield example.main(["--small", "--out", str(out), "--seed", str(SEED), "--no-progress"])
    finally:
        qorus_jit.set_num_threads(before)


def held_out_loss(folder, held) -> float:
    """Mean cross-entropy (float64) of the answer tokens of the held-out pairs, by transformers' model and
    tokenizer of ``folder``."""
    transformers = transformers_or_skip()
    import torch

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    losses = []
    for prompt, completion in held:
        p, c = tokenizer(prompt)["input_ids"], tokenizer(completion)["input_ids"]
        ids = torch.tensor([p + c])
        with torch.no_grad():
            logits = model(ids).logits[0].double()
        logp = torch.log_softmax(logits[len(p) - 1:-1], dim=-1)  # the predictions of the answer's tokens
        losses.extend((-logp[torch.arange(len(c)), torch.tensor(c)]).tolist())
    return float(np.mean(losses))


def test_writes_the_pairs_the_run_and_its_adapters(example, result):
    out, run_dir, held = result["out"], result["run_dir"], result["held"]
    lines = [json.loads(line) for line in result["pairs"].read_text(encoding="utf-8").splitlines()]
    size = example.SIZES["small"]
    assert len(lines) == size["n_train"] + size["n_held"] == size["n_train"] + len(held)
    assert [(d["prompt"], d["completion"]) for d in lines[-len(held):]] == held  # held out: the last lines
    words = {d["prompt"].split()[2] for d in lines[:-len(held)]}
    assert not words & {p.split()[2] for p, _ in held}  # never trained on
    assert all(d["completion"] == f" {d['prompt'].split()[2].upper()}." for d in lines)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["lora"]["rank"] == 8 and record["init"] == {"source": str(result["base"].resolve()), "kind": "hf"}
    assert record["tokens"]["val"] == sum(len(p + c) - 1 for p, c in held)  # (x, y) positions of the held-out pairs
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "merged-hf" / "config.json").is_file() and not (out / "merged-hf" / "adapter").exists()


def test_merged_export_in_transformers_equals_the_run(result):
    transformers = transformers_or_skip()
    import torch

    prompt, completion = result["held"][1]
    src = load_source(result["run_dir"])  # the base with the run's adapters
    ids = src.encode(prompt + completion)
    tokenizer = transformers.AutoTokenizer.from_pretrained(result["merged"])
    assert tokenizer(prompt + completion)["input_ids"] == ids.tolist()
    model = transformers.AutoModelForCausalLM.from_pretrained(result["merged"]).eval()
    with torch.no_grad():
        want = model(torch.from_numpy(ids[None])).logits[0].numpy()
    got = src.model.forward(ids[None])[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # the example's greedy continuation in transformers (merged) and peft (adapters over the base) equal qorus's
    assert result["transformers_ids"] == result["qorus_ids"]
    assert result["transformers_answer"] == result["after"][0]
    pytest.importorskip("peft")
    assert result["peft_answer"] == result["after"][0]


def test_fine_tuning_lowers_the_held_out_loss(result):
    before = held_out_loss(result["base"], result["held"])
    after = held_out_loss(result["merged"], result["held"])
    assert after < before - 0.5, (before, after)
    # the losses the example printed (qorus's validation loss) are these
    assert result["val_loss_before"] == pytest.approx(before, rel=1e-3)
    assert result["val_loss_after"] == pytest.approx(after, rel=1e-3)


def test_refuses_a_folder_in_use(example, result, capsys):
    with pytest.raises(SystemExit) as e:
        example.main(["--small", "--out", str(result["out"])])
    assert e.value.code == 2 and "--out: expected a new or empty folder" in capsys.readouterr().err
