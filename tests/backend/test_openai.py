"""``/v1/completions`` driven by the real ``openai`` client, as Continue and other OpenAI-compatible tools
drive it: prompt + suffix (fill in the middle), ``max_tokens``, ``stop``, ``n``, streaming, and its errors."""

from __future__ import annotations

import openai
import pytest

from diffucoder_lsp.engine.infill import infill
from diffucoder_lsp.engine.options import SamplingOptions

PROMPT = "def add(a, b):\n    return "
SUFFIX = "\n\nprint(add(1, 2))\n"


@pytest.fixture(scope="module")
def client(backend):
    with openai.OpenAI(base_url=backend.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def test_fill_in_the_middle_with_stop_and_n(client, lm):
    result = client.completions.create(
        model="tiny", prompt=PROMPT, suffix=SUFFIX, max_tokens=8, temperature=0, stop=["\n"], n=2
    )
    assert result.object == "text_completion" and result.model == "tiny"
    assert [c.index for c in result.choices] == [0, 1]
    # what the engine writes at that hole, in-process, with the server's decoding (cache, blocks of 32)
    from diffucoder_lsp.engine.cache import CachedContextDenoiser

    alone = infill(
        lm,
        PROMPT + "<|mask|>" + SUFFIX,
        length=8,
        options=SamplingOptions(temperature=0.0, block_size=32),
        denoiser=CachedContextDenoiser(lm.model),
        end_early=True,
    )
    expected = alone.holes[0].text.split("\n")[0]
    for choice in result.choices:
        assert choice.text == expected and "\n" not in choice.text
        assert choice.finish_reason in ("stop", "length")
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens <= 16


def test_streaming_sends_the_choices_then_done(client):
    chunks = list(
        client.completions.create(
            model="tiny", prompt=PROMPT, suffix=SUFFIX, max_tokens=6, temperature=0, stream=True
        )
    )
    assert len(chunks) == 1 and chunks[0].choices[0].index == 0
    assert isinstance(chunks[0].choices[0].text, str)


def test_a_list_of_prompts(client):
    result = client.completions.create(
        model="tiny", prompt=[PROMPT, "x = "], max_tokens=4, temperature=0, n=1
    )
    assert [c.index for c in result.choices] == [0, 1]


def test_bad_options_are_a_400_the_client_reports(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, n=99)
    assert "n must be between 1 and 8" in str(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, echo=True)
    assert "echo is not supported" in str(err.value)


def test_the_models_list(client):
    assert [m.id for m in client.models.list()] == ["tiny"]
