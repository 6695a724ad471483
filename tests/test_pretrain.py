import os
import subprocess
import sys

import pytest
import torch

import data
from model import Transformer, make_config
from pretrain import compile_warm_up, corpus_stream_beside, lr_at

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lr_warms_up_linearly_then_decays_by_cosine_to_a_tenth():
    peak, total, warmup = 1.0, 110, 10
    assert [lr_at(s, total, peak, warmup) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_at(10, total, peak, warmup) == pytest.approx(1.0)  # the peak, where the decay starts
    assert lr_at(60, total, peak, warmup) == pytest.approx(0.55)  # halfway: 0.1 + 0.9 / 2
    assert lr_at(110, total, peak, warmup) == pytest.approx(0.1)
    assert lr_at(0, 5, peak, 0) == pytest.approx(1.0)  # no warmup


def test_a_diverging_pretraining_stops_with_a_clear_error_and_saves_no_diverged_checkpoint():
    """The loss is checked at log and checkpoint steps (no host sync per step): a non-finite loss in between is
    caught there, before any checkpoint of the diverged weights."""
    import torch

    from config import TrainConfig
    from model import Transformer, make_config
    from pretrain import pretrain

    cfg = TrainConfig(preset="tiny", device="cpu", pretrain_steps=30, pretrain_batch_size=2, pretrain_seq_len=16,
                      pretrain_lr=1e3, pretrain_warmup=0, pretrain_unique_tokens=2000, log_every=1)
    torch.manual_seed(0)
    rows, saved = [], []
    with pytest.raises(FloatingPointError, match=r"not finite at a step in \d+\.\.\d+; lower TrainConfig.pretrain_lr"):
        pretrain(Transformer(make_config("tiny")), cfg, torch.device("cpu"), rows.append,
                 save=lambda step, opt: saved.append(step))
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in rows)  # nothing non-finite was logged
    assert all(step <= rows[-1]["step"] + 1 for step in saved)  # no checkpoint after the last finite log


def test_the_corpus_made_in_another_process_is_the_one_made_here_while_work_runs_here():
    ran = []
    stream = corpus_stream_beside(5000, 3, data.CorpusConfig(), lambda: ran.append(True))
    assert ran == [True] and stream.dtype == torch.long
    assert stream.tolist() == data.corpus_tokens(5000, seed=3)


def test_a_script_without_a_main_guard_still_gets_its_corpus(tmp_path):
    """The spawned child re-runs an unguarded script, which Python stops; the stream then comes from this process,
    the same stream, after the work ran once."""
    script = tmp_path / "unguarded.py"
    script.write_text(f"""import sys; sys.path.insert(0, {ROOT!r})
import data, pretrain
ran = []
stream = pretrain.corpus_stream_beside(3000, 4, data.CorpusConfig(), lambda: ran.append(1))
assert ran == [1] and stream.tolist() == data.corpus_tokens(3000, seed=4)
print("same stream")
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "same stream" in done.stdout, done.stderr[-2000:]
    assert "generating the corpus here" in done.stderr


def test_the_compile_warm_up_leaves_no_trace():
    # on the CPU the step is eager, but the warm-up's promise is the same: weights, gradients, router loads as
    # they were (a training forward counts tokens into the routers' load)
    torch.manual_seed(0)
    model = Transformer(make_config("tiny")).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compile_warm_up(model, model, 2, 16, torch.autocast("cpu", enabled=False), torch.device("cpu"))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert all(g.load.sum() == 0 for g in model.gates())


def test_compiled_blocks_are_undone_on_exit_even_after_an_error():
    from model import compiled_blocks
    model = Transformer(make_config("tiny"))
    try:
        with compiled_blocks(model):
            assert all("forward" in vars(block) for block in model.layers)  # torch.compile is lazy: no compile here
            raise FloatingPointError("a diverged step")
    except FloatingPointError:
        pass
    assert not any("forward" in vars(block) for block in model.layers)
    assert all(type(block).forward is block.forward.__func__ for block in model.layers)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the blocks are compiled on a GPU only")
def test_pretraining_with_compiled_blocks_follows_the_eager_run_and_leaves_the_blocks_eager():
    from config import TrainConfig
    from pretrain import pretrain

    losses = {}
    for eager in (True, False):
        cfg = TrainConfig(preset="tiny", device="cuda", pretrain_steps=20, pretrain_batch_size=8, pretrain_seq_len=64,
                          pretrain_warmup=2, pretrain_unique_tokens=20_000, log_every=1, eager=eager)
        torch.manual_seed(0)
        model = Transformer(make_config("tiny")).cuda()
        rows = []
        pretrain(model, cfg, torch.device("cuda"), rows.append, save=lambda step, opt: None)
        losses[eager] = torch.tensor([row["loss"] for row in rows])
        assert not any("forward" in vars(block) for block in model.layers)
    assert losses[False][-1] < losses[False][0] - 1  # it learns (a tiny model, 20 steps: 6.2 -> 4.6 on an H100)
    torch.testing.assert_close(losses[False], losses[True], rtol=0.05, atol=0.05)  # bf16 steps, fused differently
