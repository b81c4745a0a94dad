"""SFT data from a repository: file selection (git and walk), held-out files, hole kinds, instruction rows."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from diffucoder_lsp.errors import BadInputError
from diffucoder_lsp.model.loading import load_model
from diffucoder_lsp.train.data import line_end_table
from diffucoder_lsp.train.repo_data import (
    HOLDOUT_SLACK,
    RepoExampleSampler,
    RepoFile,
    choose_heldout,
    function_bodies,
    list_repo_files,
    load_repo,
    read_instructions,
    split_summary,
    suffixes_for,
    write_heldout,
)

TOYREPO = Path(__file__).resolve().parent.parent / "fixtures" / "toyrepo"


@pytest.fixture
def repo(tmp_path):
    """The toy repo plus files its .gitignore excludes (they cannot live in our own git tree)."""
    root = tmp_path / "toy"
    shutil.copytree(TOYREPO, root)
    (root / "build").mkdir()
    (root / "build" / "generated_copy.py").write_text("def ignored(x):\n    return x\n")
    (root / "secrets.py").write_text("API_TOKEN = 'ignored by .gitignore'\n")
    (root / "run.log").write_text("log line\n")
    (root / ".venv" / "lib").mkdir(parents=True)
    (root / ".venv" / "lib" / "site.py").write_text("def venv_code():\n    return 1\n")
    return root


def _expected_py(files):
    return {f for f in files if f.endswith(".py")}


def test_walk_respects_gitignore_and_skips_tool_dirs(repo):
    files, how = list_repo_files(repo)
    assert how == "walk"
    assert "toymath/ops.py" in files and "tests/test_ops.py" in files and "README.md" in files
    for ignored in ("build/generated_copy.py", "secrets.py", "run.log", ".venv/lib/site.py"):
        assert ignored not in files


def test_git_ls_files_when_a_git_repo(repo):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "toymath", ".gitignore"], check=True)
    files, how = list_repo_files(repo)
    assert how == "git"
    # tracked files and untracked-but-not-ignored ones (tests/), never the ignored ones
    assert {"toymath/ops.py", "tests/test_text.py", "README.md"} <= set(files)
    assert not {"build/generated_copy.py", "secrets.py", "run.log"} & set(files)


def test_language_filter_and_holdout(repo):
    files = load_repo(repo, "python", holdout=["toymath/text.py"])
    paths = {f.path for f in files}
    assert paths == {
        "conftest.py",
        "toymath/__init__.py",
        "toymath/ops.py",
        "toymath/text.py",
        "tests/test_ops.py",
        "tests/test_text.py",
    }
    assert [f.path for f in files if f.held_out] == ["toymath/text.py"]
    assert load_repo(repo, ".md", holdout_fraction=0.0)[0].path == "README.md"
    # without globs, some file is always held out in a repo with several files
    assert any(f.held_out for f in load_repo(repo, "python"))
    with pytest.raises(BadInputError):
        suffixes_for("klingon")


def test_function_bodies_skip_signature_and_docstring():
    text = (TOYREPO / "toymath" / "ops.py").read_text()
    bodies = [text[a:b] for a, b in function_bodies(text)]
    clamp = next(b for b in bodies if "value < low" in b)
    assert clamp.startswith("    if value < low:") and clamp.endswith("return value\n")
    assert all('"""' not in b for b in bodies)
    assert len(bodies) == 4


def test_sampler_rows_train_only_the_hole_and_are_reproducible(tiny_ckpt_fp32, repo):
    lm = load_model(tiny_ckpt_fp32, device="cpu", dtype="fp32")
    tok = lm.tokenizer
    files = [f for f in load_repo(repo, "python", holdout=["toymath/text.py"]) if not f.held_out]
    s = RepoExampleSampler(files, tok, 96, line_end_table(tok), seed=3)
    b1, b2 = s.batch(5, 8), s.batch(5, 8)
    assert np.array_equal(b1.input_ids, b2.input_ids) and np.array_equal(b1.trainable, b2.trainable)
    assert not np.array_equal(s.batch(6, 8).input_ids, b1.input_ids)
    texts = {f.text for f in files}
    for r in range(8):
        tr = np.flatnonzero(b1.trainable[r])
        assert len(tr) > 0 and np.all(np.diff(tr) == 1), "one contiguous trainable span per row"
        assert b1.valid[r, tr].all()
        ids = b1.input_ids[r, b1.valid[r]]
        # the hole's code tokens then eos pads: the decoded row (pads dropped) is a substring of a source file
        decoded = tok.decode(ids.tolist())
        assert any(decoded.strip()[:20] in t for t in texts)
        assert (~b1.trainable[r, : tr[0]]).all(), "the context before the hole is never trained"


def test_window_rows_train_every_token_of_a_stretch_of_a_file(tiny_ckpt_fp32, repo):
    """--window-fraction: some rows are plain windows of a training file, every token trained (the plain masked
    diffusion loss); 0 leaves the hole rows exactly as they were, draw for draw."""
    lm = load_model(tiny_ckpt_fp32, device="cpu", dtype="fp32")
    tok = lm.tokenizer
    files = [f for f in load_repo(repo, "python", holdout=["toymath/text.py"]) if not f.held_out]
    plain = RepoExampleSampler(files, tok, 48, line_end_table(tok), seed=3)
    off = RepoExampleSampler(files, tok, 48, line_end_table(tok), window_fraction=0.0, seed=3)
    assert np.array_equal(plain.batch(2, 6).input_ids, off.batch(2, 6).input_ids)
    windows = RepoExampleSampler(files, tok, 48, line_end_table(tok), window_fraction=1.0, seed=3)
    b = windows.batch(2, 6)
    texts = [f.text for f in files]
    for r in range(6):
        assert b.valid[r].any() and np.array_equal(b.trainable[r], b.valid[r]), "every real token is trained"
        assert not b.is_infill[r]
        text = tok.decode(b.input_ids[r, b.valid[r]].tolist())
        assert any(("\n" + text) in ("\n" + t) for t in texts), "a stretch of one file from a line start"
    half = RepoExampleSampler(files, tok, 48, line_end_table(tok), window_fraction=0.5, seed=3).batch(0, 64)
    assert 10 < int((~half.is_infill).sum()) < 54  # both kinds of row
    with pytest.raises(BadInputError, match="window fraction"):
        RepoExampleSampler(files, tok, 48, line_end_table(tok), window_fraction=1.5)


def test_instruction_rows_train_only_the_response(tiny_ckpt_fp32, tmp_path):
    lm = load_model(tiny_ckpt_fp32, device="cpu", dtype="fp32")
    tok = lm.tokenizer
    path = tmp_path / "instr.jsonl"
    path.write_text(json.dumps({"prompt": "def double(x):\n", "response": "    return x * 2\n"}) + "\n")
    rows = read_instructions(path)
    s = RepoExampleSampler([], tok, 160, line_end_table(tok), instructions=rows, seed=0)
    b = s.batch(0, 4)
    for r in range(4):
        tr = np.flatnonzero(b.trainable[r])
        prompt = tok.decode(b.input_ids[r, : tr[0]].tolist())
        # the tiny tokenizer has <|im_start|>, so the prompt is wrapped in the Instruct models' ChatML template
        assert prompt.startswith("system\nYou are a helpful assistant.") and prompt.endswith(
            "def double(x):\n\n\nassistant\n"
        )
        assert (
            tok.decode(b.input_ids[r, tr].tolist()) == "    return x * 2\n"
        )  # response (+ end/pads, dropped)
        assert tok.im_end_id in b.input_ids[r, tr].tolist(), "the response ends with <|im_end|>"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(BadInputError, match="line 1"):
        read_instructions(bad)


def _files(sizes: dict[str, int]) -> list[RepoFile]:
    return [RepoFile(path, "x = 1\n" * (n // 6), False) for path, n in sizes.items()]


def test_heldout_split_is_balanced_by_characters():
    """A big file (a quarter of the code) is never the held-out set; the held-out share stays near the target
    whichever files the path hash orders first; at least one file is held out and never all."""
    for seed in range(30):
        sizes = {f"pkg{seed}/mod{i}.py": 600 + 60 * i for i in range(40)}
        sizes[f"pkg{seed}/core.py"] = sum(sizes.values()) // 3  # 25 % of everything
        files = _files(sizes)
        choose_heldout(files, 0.1)
        sp = split_summary(files)
        assert 0.05 <= sp["heldout_char_share"] <= 0.1 * HOLDOUT_SLACK
        assert not next(f for f in files if f.path.endswith("core.py")).held_out
        assert sp["largest_heldout_file_share"] < 0.05
    two = _files({"a.py": 6000, "b.py": 60})  # nothing fits 10 %: the smallest file
    choose_heldout(two, 0.1)
    assert [f.path for f in two if f.held_out] == ["b.py"]
    one = _files({"a.py": 600})
    choose_heldout(one, 0.5)
    assert not one[0].held_out
    many = _files({f"m{i}.py": 600 for i in range(3)})
    choose_heldout(many, 0.99)
    assert 1 <= sum(f.held_out for f in many) < 3


def test_heldout_files_are_written_for_eval_intrinsic(repo, tmp_path):
    from diffucoder_lsp.eval.intrinsic import load_corpus

    files = load_repo(repo, "python", holdout=["toymath/text.py"])
    txt, jsonl = write_heldout(files, tmp_path)
    assert txt.read_text().split() == ["toymath/text.py"]
    docs = load_corpus(jsonl)
    assert [d["path"] for d in docs] == ["toymath/text.py"]
    assert docs[0]["text"] == (repo / "toymath" / "text.py").read_text()


def test_heldout_lines_reach_the_limit_when_small_files_run_out():
    from diffucoder_lsp.train.sft import heldout_lines

    big = {"path": "big.py", "sha": "b", "text": "".join(f"x{i} = {i}\n" for i in range(300))}
    small = [{"path": f"s{i}.py", "sha": f"s{i}", "text": "a = 1\nb = 2\n"} for i in range(4)]
    lines = heldout_lines([big, *small], 200)
    assert len(lines) == 200  # an equal share (40 each) would give 40 + 4 x 2 = 48
    assert "big.py" in {s.path for s in lines} and len({s.path for s in lines}) >= 2
    assert len(heldout_lines(small, 200)) == 8  # every eligible line, then it stops
