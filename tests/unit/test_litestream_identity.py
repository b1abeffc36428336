"""litestream.check_identity: the key alone, or an age-keygen identity file (restore_offsite_identity_file)."""

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils import litestream

KEY = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"


def test_the_key_alone_is_taken():
    assert litestream.check_identity(KEY + "\n") == KEY


def test_an_identity_file_gives_its_one_key():
    text = f"# created: 2026-12-02T14:23:00Z\n# public key: age1xyz\n{KEY}\n"
    assert litestream.check_identity(text) == KEY


@pytest.mark.parametrize("text", ["", "# public key: age1xyz\n", f"{KEY}\n{KEY}\n", "age1notasecret"])
def test_anything_else_is_refused(text):
    with pytest.raises(litestream.LitestreamError, match="one age secret key"):
        litestream.check_identity(text)
