"""A stand-in for the Anthropic SDK (`import anthropic`) for the README's
Python snippets (t/016_readme.pl): no test may call a vendor.  Same shapes
as the SDK's Messages API: content blocks and usage, as attributes."""
from types import SimpleNamespace


class _Messages:
    def create(self, *, model, max_tokens, messages, **kwargs):
        return SimpleNamespace(
            model=model,
            content=[SimpleNamespace(type="text", text="echo: " + messages[0]["content"])],
            usage=SimpleNamespace(input_tokens=812, output_tokens=1045, cache_read_input_tokens=0,
                                  cache_creation_input_tokens=0, cache_creation=None))


class Anthropic:
    def __init__(self, **kwargs):
        self.messages = _Messages()
